"""Each stage inside its MLflow run: the wiring that the CLI and the Kubeflow components share.

A stage function here runs one hydra_core stage in an MLflow run (nested under the pipeline's run
when there is one) and records what the stage does not record itself: its data as MLflow dataset
inputs, its output directory as an artifact and a registered model version, the judgments as a
table. It returns the stage's summary plus a `tracking` entry (state, run id, where pending
records wait), which also goes into the stage's summary file. This module imports no kfp: a
component passes its artifacts' paths in and copies what it needs out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import typing
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_origin

from hydra_core.config import DataConfig, EvalConfig, ModelInitConfig, PPOConfig, TrainConfig, override, to_dict
from hydra_core.data.schema import MANIFEST, SPLIT_FILES, split_path
from hydra_core.tracking.mlflow_tracker import DEFAULT_EXPERIMENT, PENDING_DIR, MlflowTracker, connect, redact

SFT_MODEL = "hydra-rlhf-sft"
POLICY_MODEL = "hydra-rlhf-policy"
# A policy becomes champion only when it beats its Hydra-SFT baseline with confidence.
CHAMPION_THRESHOLD = 0.5
MODEL_ARTIFACT = "model"  # where a stage's output directory goes in its MLflow run
LEFT_OUT = ("checkpoints", PENDING_DIR)  # resumable state and tracking leftovers: not part of a model
SFT_RUN_NAMES = {"sft": "sft", "rm": "reward-model", "hydra": "hydra-sft"}

# The few scalars a component reports in its Kubeflow Metrics output (and a variant's comparison row).
DATA_KEYS = tuple(f"data/{name}" for name in SPLIT_FILES)
SFT_KEYS = ("eval/reward_accuracy", "eval/gold_accuracy", "eval/lm_loss", "train/loss", "train_seconds",
            "memory/peak_bytes")
PPO_KEYS = ("objective/scores", "objective/kl", "policy/clipfrac", "eval/gold_accuracy_before", "eval/gold_accuracy",
            "memory/peak_bytes", "memory/trainable_params", "time/s_per_sample", "train_seconds_this_run")
PIPELINE_JOB_TAG = "hydra_rlhf.pipeline_job"  # on the parent run: the Kubeflow job it records
EVAL_KEYS = ("win_rate", "win_rate_low", "win_rate_high", "wins", "ties", "losses", "errors", "position_bias")


@dataclass
class Tracking:
    """Where runs go. An empty `uri` means $MLFLOW_TRACKING_URI, and no tracking if that is unset too."""

    uri: str = ""
    experiment: str = ""  # "" = $MLFLOW_EXPERIMENT_NAME, else DEFAULT_EXPERIMENT
    parent_run_id: str = ""
    tags: dict = field(default_factory=dict)

    def tracker(self, run_name: str, record_dir: str | Path, *, run_id: str = "", tags: dict | None = None,
                system_metrics: bool = True) -> MlflowTracker:
        uri = self.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not _main_process():
            uri = ""
        return MlflowTracker(uri, run_name, Path(record_dir) / PENDING_DIR,
                             experiment=self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT),
                             parent_run_id=self.parent_run_id, run_id=run_id, tags={**self.tags, **(tags or {})},
                             system_metrics=system_metrics)


def _main_process() -> bool:
    """In a distributed run only rank 0 records, as the stages themselves do."""
    return os.environ.get("RANK", "0") == "0"


def stage_config(cls, overrides: dict | None = None, **values):
    """`cls` with `values` (None keeps a field's default) and then `overrides`, any other fields.

    Values are checked against the fields' types (a whole float passes for an int: JSON and Kubeflow
    send numbers as floats); a field given both ways, an unknown field, a value of the wrong type
    or outside a field's choices is an error.
    """
    given = {k: v for k, v in values.items() if v is not None}
    overrides = dict(overrides or {})
    twice = sorted(set(given) & set(overrides))
    if twice:
        raise ValueError(f"{cls.__name__}: {twice} given both as a parameter and in the config overrides")
    hints = typing.get_type_hints(cls)
    changes = {name: _typed(cls, name, hints.get(name), value) for name, value in {**given, **overrides}.items()}
    return override(cls(), **changes)


def _typed(cls, name: str, hint, value):
    if hint is None:  # not a field: override() names it
        return value
    if get_origin(hint) is Literal:
        if value not in get_args(hint):
            raise ValueError(f"{cls.__name__}.{name} must be one of {list(get_args(hint))}, got {value!r}")
        return value
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{cls.__name__}.{name} expects {hint.__name__}, got {value!r}")
    return value


def base_model(model: str, preset: str | None = None) -> str:
    """`model` (a directory or a hub id), or when it is empty a fresh random-init `preset` model."""
    if model:
        return model
    from hydra_core.models.presets import build_base_model

    cfg = stage_config(ModelInitConfig, preset=preset, output_dir=tempfile.mkdtemp(prefix="hydra-base-model-"))
    return str(build_base_model(cfg))


def scalars(summary: dict, keys) -> dict[str, float]:
    """The numeric entries of `summary` among `keys` (a missing or None one is left out)."""
    return {k: float(summary[k]) for k in keys
            if isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool)}


def fill_metrics(metrics, summary: dict, keys) -> dict[str, float]:
    """Report `scalars(summary, keys)` to `metrics` (a Kubeflow Metrics artifact: `log_metric(name, value)`)."""
    values = scalars(summary, keys)
    for name, value in values.items():
        metrics.log_metric(name, value)
    return values


@contextmanager
def _stage_run(tracking: Tracking, run_name: str, output_dir: str | Path, summary_file: Path | None = None,
               tags: dict | None = None):
    run = tracking.tracker(run_name, output_dir, tags={"hydra_rlhf.stage": run_name, **(tags or {})})
    try:
        yield run
    except BaseException:
        run.close("FAILED")
        raise
    run.close("FINISHED")
    if summary_file is not None and summary_file.exists() and _main_process():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        summary["tracking"] = run.status()
        tmp = summary_file.with_name(summary_file.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, summary_file)


def _log_splits(run: MlflowTracker, data_dir: str, names) -> None:
    for name in names:
        context = "training" if name.endswith("_train") else "evaluation"
        run.log_dataset(split_path(data_dir, name), name, context)


def _log_output_dir(run: MlflowTracker, directory: str | Path, artifact_path: str) -> None:
    for entry in sorted(Path(directory).iterdir()):
        if entry.name not in LEFT_OUT:
            run.log_artifact(entry, f"{artifact_path}/{entry.name}" if entry.is_dir() else artifact_path)


def prepare_data(cfg: DataConfig, tracking: Tracking) -> dict:
    """`prepare` in a `data-prep` run: params, split counts, the manifest, every split as a dataset."""
    from hydra_core.data.prepare import prepare

    with _stage_run(tracking, "data-prep", cfg.output_dir) as run:
        manifest = prepare(cfg)
        counts = {f"data/{name}": n for name, n in manifest["counts"].items()}
        run.log_params(to_dict(cfg))
        run.log_metrics(counts, step=0)
        run.log_artifact(Path(cfg.output_dir) / MANIFEST, "data")
        _log_splits(run, cfg.output_dir, SPLIT_FILES)
    return {**manifest, **counts, "tracking": run.status()}


def sft(cfg: TrainConfig, tracking: Tracking, registered_model: str = "") -> dict:
    """`train` in a run named by its mode; the model directory is logged and, given a name, registered."""
    from hydra_core.train.trainer import SUMMARY_FILE, train

    run_name = SFT_RUN_NAMES[cfg.mode]
    registry = {}
    with _stage_run(tracking, run_name, cfg.output_dir, Path(cfg.output_dir) / SUMMARY_FILE) as run:
        _log_splits(run, cfg.data, ("demos_train", "pairs_train"))
        summary = train(cfg, run)
        if summary:  # {} on the other processes of a distributed run
            _log_output_dir(run, cfg.output_dir, MODEL_ARTIFACT)
            if registered_model:
                version = run.register_model(registered_model, MODEL_ARTIFACT, tags={
                    "variant": run_name, "data": cfg.data, "base_model": cfg.model, "run_id": run.run_id,
                    "pipeline_run_id": tracking.parent_run_id})
                registry = {"registered_model": registered_model, "model_version": version}
    return {**summary, "tracking": {**run.status(), **registry}} if summary else {}


def ppo(cfg: PPOConfig, tracking: Tracking) -> dict:
    """`run_ppo` in a `ppo-<variant>` run; the policy directory is logged as the `model` artifact."""
    from hydra_core.ppo.trainer import SUMMARY_FILE, run_ppo

    with _stage_run(tracking, f"ppo-{cfg.variant}", cfg.output_dir, Path(cfg.output_dir) / SUMMARY_FILE,
                    tags={"variant": cfg.variant}) as run:
        _log_splits(run, cfg.data, ("prompts_train",))
        summary = run_ppo(cfg, run)
        _log_output_dir(run, cfg.output_dir, MODEL_ARTIFACT)
    return {**summary, "tracking": run.status()}


def evaluate(cfg: EvalConfig, tracking: Tracking, tags: dict | None = None) -> dict:
    """`run_eval` in a `pairwise-eval` run, with the judgments as an MLflow table."""
    from hydra_core.eval.report import FILES
    from hydra_core.eval.runner import run_eval

    out = Path(cfg.output_dir)
    with _stage_run(tracking, "pairwise-eval", out, out / FILES["summary"], tags=tags) as run:
        if Path(cfg.prompts).is_dir():
            _log_splits(run, cfg.prompts, ("prompts_eval",))
        summary = run_eval(cfg, run)
        run.log_table(out / FILES["judgments"], "eval/judgments_table.json")
    return {**summary, "tracking": run.status()}


def register_policy(tracking: Tracking, evaluation_dir: str, policy_run_id: str, registered_model: str,
                    champion_threshold: float, variant: str, record_dir: str | Path) -> dict:
    """Register the evaluated policy logged by run `policy_run_id` as a new version of
    `registered_model`, aliased `candidate`, and `champion` too when the lower bound of its judged
    win-rate beats `champion_threshold`. Returns the decision, with a Markdown account of it."""
    from hydra_core.eval.report import FILES

    summary = json.loads((Path(evaluation_dir) / FILES["summary"]).read_text(encoding="utf-8"))
    low = summary["win_rate_low"]
    promote = summary["win_rate"] is not None and low > champion_threshold
    aliases = ["candidate", "champion"] if promote else ["candidate"]
    decision = {"variant": variant, "win_rate": summary["win_rate"], "win_rate_low": low,
                "champion_threshold": champion_threshold, "registered_model": registered_model,
                "model_version": "", "aliases": []}
    with _stage_run(tracking, f"register-{variant}", record_dir, tags={"variant": variant}) as run:
        run.log_params({"registered_model": registered_model, "champion_threshold": champion_threshold,
                        "policy_run_id": policy_run_id})
        run.log_metrics(scalars(summary, EVAL_KEYS), step=0)
        if not registered_model:
            reason = "no registered model name was given"
        elif not policy_run_id:
            reason = "the PPO stage has no MLflow run to register from (tracking was off or pending)"
        else:
            tags = {"variant": variant, "data": summary["prompts"], "run_id": policy_run_id,
                    "pipeline_run_id": tracking.parent_run_id, "judge": summary["judge"]["name"],
                    "win_rate": summary["win_rate"], "win_rate_low": low, "baseline": summary["baseline"]}
            decision["model_version"] = run.register_model(registered_model, MODEL_ARTIFACT, tags, aliases,
                                                           source_run_id=policy_run_id)
            reason = "" if decision["model_version"] else UNREGISTERED[run.state]
        if decision["model_version"]:
            decision["aliases"] = aliases
        run.set_tags({"decision": ",".join(decision["aliases"]) or "not registered"})
    decision["tracking"] = run.status()
    decision["markdown"] = _decision_markdown(decision, reason)
    return decision


UNREGISTERED = {"off": "tracking is off (no tracking URI)",
                "pending": "MLflow was unreachable; the registration waits in the journal"}


def _rate(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _decision_markdown(d: dict, reason: str) -> str:
    if reason:
        outcome = f"**Not registered**: {reason}."
    else:
        outcome = (f"Registered **{d['registered_model']}** version **{d['model_version']}** "
                   f"with aliases {', '.join(f'`{a}`' for a in d['aliases'])}.")
    verdict = "beats" if "champion" in d["aliases"] else "does not beat"
    return (f"# Policy {d['variant']}\n\n{outcome}\n\nJudged win-rate {_rate(d['win_rate'])}; its lower "
            f"confidence bound {_rate(d['win_rate_low'])} {verdict} the champion threshold "
            f"{d['champion_threshold']}.\n")


def open_pipeline_run(tracking: Tracking, run_name: str) -> str:
    """Create the parent run of a pipeline run and return its id ("" when tracking is off or down).

    It stays open: `compare_variants` closes it at the end of the pipeline. A parent run that could
    not be created is not journaled (it would hold nothing but its name): the stages' own journals
    then replay as top-level runs.
    """
    top = dataclasses.replace(tracking, parent_run_id="")
    return top.tracker(run_name or "hydra-rlhf", tempfile.mkdtemp(prefix="hydra-pipeline-run-"),
                       tags={"hydra_rlhf.stage": "pipeline", PIPELINE_JOB_TAG: run_name},
                       system_metrics=False).run_id


def close_pipeline_run(tracking: Tracking, job_name: str, state: str, error: str = "") -> list[str]:
    """End the MLflow runs of pipeline job `job_name` that are still open, however the job ended.

    The pipeline's exit step. Only `compare_variants` closes the parent run, so after a failed step
    it would stay RUNNING, as would the run of a step that was killed (out of memory, evicted).
    The parent ends FINISHED when `state` is SUCCEEDED and FAILED otherwise, an open stage run
    KILLED; each gets the job's final state (and its error) as tags. Returns the ids it ended.
    """
    uri = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri or not job_name:
        return []
    ended = []
    try:
        client = connect(uri)
        experiment = client.get_experiment_by_name(tracking.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME",
                                                                                         DEFAULT_EXPERIMENT))
        if experiment is None:  # the job failed before data prep recorded anything
            return []
        ids = [experiment.experiment_id]
        for parent in client.search_runs(ids, filter_string=f"tags.`{PIPELINE_JOB_TAG}` = '{job_name}'"):
            stages = client.search_runs(ids, filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
            for run in [*stages, parent]:
                if run.info.status != "RUNNING":
                    continue
                client.set_tag(run.info.run_id, "hydra_rlhf.pipeline_state", state)
                if error:
                    client.set_tag(run.info.run_id, "hydra_rlhf.pipeline_error", error[:5000])
                status = ("FINISHED" if state == "SUCCEEDED" else "FAILED") if run is parent else "KILLED"
                client.set_terminated(run.info.run_id, status)
                ended.append(run.info.run_id)
    except Exception as e:  # noqa: BLE001 - tracking trouble must not turn a finished job into a failed one
        warnings.warn(f"MLflow at {redact(uri)}: the runs of pipeline job {job_name} left open could not be "
                      f"closed ({type(e).__name__}: {e}); closed so far: {ended or 'none'}", RuntimeWarning,
                      stacklevel=2)
    return ended


COMPARISON_COLUMNS = (("variant", "variant"), ("win_rate", "win-rate"), ("win_rate_low", "low"),
                      ("win_rate_high", "high"), ("wins", "W"), ("ties", "T"), ("losses", "L"),
                      ("errors", "E"), ("eval/gold_accuracy", "gold acc."), ("memory/peak_bytes", "peak MiB"),
                      ("memory/trainable_params", "trainable"), ("time/s_per_sample", "s/sample"))


def compare_variants(tracking: Tracking, rows: list[dict], record_dir: str | Path, registered_model: str = "",
                     versions: list[str] = (), champion_threshold: float = CHAMPION_THRESHOLD) -> str:
    """The variants side by side, best lower bound first, as Markdown; logged to the pipeline's run
    (per-variant metrics and the table), which is then closed. Given the registered `versions` of
    the variants, the aliases are settled on the best of them (`settle_aliases`)."""
    ranked = sorted(rows, key=lambda r: -(r.get("win_rate_low") or 0.0))
    lines = ["# PPO variants against the Hydra-SFT baseline", "",
             "| " + " | ".join(title for _, title in COMPARISON_COLUMNS) + " |",
             "|" + "---|" * len(COMPARISON_COLUMNS)]
    for row in ranked:
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _ in COMPARISON_COLUMNS) + " |")
    settled = settle_aliases(tracking, registered_model, list(versions), champion_threshold)
    text = "\n".join([*lines, *(["", settled] if settled else [])]) + "\n"
    if tracking.parent_run_id:
        top = dataclasses.replace(tracking, parent_run_id="")
        run = top.tracker("pipeline", record_dir, run_id=tracking.parent_run_id, system_metrics=False)
        for row in ranked:
            variant = row.get("variant", "policy")
            run.log_metrics({f"{variant}/{k}": v for k, v in scalars(row, EVAL_KEYS).items()}, step=0)
        path = Path(record_dir) / "comparison.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        run.log_artifact(path)
        run.close("FINISHED")
    return text


def settle_aliases(tracking: Tracking, registered_model: str, versions: list[str], champion_threshold: float) -> str:
    """Point `candidate` at the version of `registered_model` among `versions` with the best judged
    lower bound, and `champion` too when that bound beats `champion_threshold`.

    Each register step moves the aliases when it finishes, so with several variants registered in
    parallel they would rest on whichever finished last; the compare step runs after all of them.
    Returns a Markdown line saying what it did ("" when there is nothing to settle).
    """
    versions = [v for v in versions if v]
    uri = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not (uri and registered_model and versions):
        return ""
    def low(version) -> float:
        try:
            return float(version.tags.get("win_rate_low"))
        except (TypeError, ValueError):  # no win-rate: every judgment failed
            return -math.inf

    try:
        client = connect(uri)
        best = max((client.get_model_version(registered_model, v) for v in versions), key=low)
        client.set_registered_model_alias(registered_model, "candidate", best.version)
        promote = low(best) > champion_threshold
        if promote:
            client.set_registered_model_alias(registered_model, "champion", best.version)
    except Exception as e:  # noqa: BLE001 - the comparison stands without the aliases; say so
        return f"The aliases of {registered_model} were not settled: {type(e).__name__}: {e}"
    name = f"version {best.version} ({best.tags.get('variant', 'policy')}, lower bound {low(best):.3f})"
    return (f"`candidate` of {registered_model}: {name}. `champion`: "
            + (name if promote else f"unchanged, no variant's lower bound beat {champion_threshold}") + ".")


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "memory/peak_bytes":
        return f"{value / 2**20:.0f}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)
