"""How each stage runs end to end: the one place the CLI and the Kubeflow components both call.

A stage function runs one hydra_core stage in an MLflow run (nested under the pipeline's run when
there is one) and records what the stage does not record itself: its data as MLflow dataset
inputs, its output directory as the `model` artifact and a registered model version, the
judgments as a table. It returns the stage's summary plus a `tracking` entry (state, run id,
where pending records wait), which also goes into the stage's summary file.

The last two stages of a pipeline are here too: `register_policy` (the registry's rules are in
`hydra_core.registry`) and `compare_variants`, which closes the pipeline's parent run.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from hydra_core import checkpoint, registry
from hydra_core.checkpoint_store import CheckpointStore, uri_problem
from hydra_core.config.fields import build, to_dict
from hydra_core.config.files import config_file_name, save_config
from hydra_core.config.parameters import uses_separate_models
from hydra_core.config.settings import (DataConfig, EvalConfig, ExportConfig, ModelInitConfig, PPOConfig, SFTConfig,
                                      check_rollout_engine)
from hydra_core.data.prepare import prepare
from hydra_core.data.splits import MANIFEST, SPLIT_FILES, split_path
from hydra_core.eval.report import FILES as EVAL_FILES
from hydra_core.eval.report import SUMMARY_METRICS as EVAL_METRICS
from hydra_core.eval.report import metric_names
from hydra_core.eval.runner import run_eval
from hydra_core.models.hydra import load_hydra, saved_heads
from hydra_core.models.presets import build_base_model
from hydra_core.models.reference import check_model
from hydra_core.plots import plot_comparison
from hydra_core.ppo.trainer import CURVES_FILE as PPO_CURVES
from hydra_core.ppo.trainer import SUMMARY_FILE as PPO_SUMMARY
from hydra_core.ppo.trainer import run_ppo
from hydra_core.sft.trainer import CURVES_FILE as SFT_CURVES
from hydra_core.sft.trainer import SUMMARY_FILE as SFT_SUMMARY
from hydra_core.sft.trainer import run_sft
from hydra_core.tracking.base import numeric_entries
from hydra_core.tracking.mlflow_tracker import PENDING_DIR, RUN_ID, MlflowTracker
from hydra_core.tracking.runs import STAGE_TAG, Tracking, main_process

LOCK = ".hydra-rlhf.lock"  # held by the stage writing an output directory, while it runs
# resumable state, tracking leftovers and the lock: not part of a model
LEFT_OUT = (checkpoint.DIRECTORY, PENDING_DIR, LOCK)
# what MLflow's transformers flavour needs to load a policy; given, so it pins nothing else
POLICY_REQUIREMENTS = ("torch", "transformers", "safetensors")
SFT_RUN_NAMES = {"sft": "sft", "rm": "reward-model", "hydra": "hydra-sft"}
# what a run of a resumable stage leaves in its output directory besides the model
RUN_FILES = {"sft": (config_file_name(SFTConfig), "metrics.jsonl", checkpoint.DIRECTORY, SFT_SUMMARY),
             "ppo": (config_file_name(PPOConfig), "metrics.jsonl", checkpoint.DIRECTORY, PPO_SUMMARY)}


@contextmanager
def _exclusive(directory: str | Path, stage: str):
    """Hold `directory` for this stage while it runs: a second run writing there is refused, not
    interleaved. Only the main process of a distributed run writes, so only it holds the lock."""
    if not main_process():
        yield
        return
    path = Path(directory) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{directory}: another hydra-rlhf {stage} is writing there now; wait for it to end "
                             "or choose another output_dir") from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def _checkpoints(cfg: SFTConfig | PPOConfig) -> CheckpointStore:
    """Where the stage's checkpoints go; a `checkpoint_uri` it cannot write is refused before any work."""
    if cfg.checkpoint_uri and main_process() and (problem := uri_problem(cfg.checkpoint_uri)):
        raise ValueError(f"checkpoint_uri {cfg.checkpoint_uri}: {problem}")
    return CheckpointStore(cfg.checkpoint_uri, cfg.output_dir)


def _claim(cfg: SFTConfig | PPOConfig) -> None:
    """Refuse an output directory that holds an earlier run of the stage unless the run resumes it
    or starts it over; starting over removes that run's records first, its checkpoints included.
    The main process of a distributed run does this for all of them."""
    out = Path(cfg.output_dir)
    earlier = [name for name in RUN_FILES[cfg.STAGE] if (out / name).exists()]
    if not earlier or cfg.resume or not main_process():
        return
    if not cfg.overwrite:
        raise ValueError(f"{out}: holds an earlier {cfg.STAGE} run ({', '.join(earlier)}); pass --resume to continue "
                         "it, --overwrite to start over, or choose another --output-dir")
    for name in earlier:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


@contextmanager
def _stage_run(tracking: Tracking, run_name: str, output_dir: str | Path, summary_file: Path | None = None,
               tags: dict | None = None, sources: dict | None = None, store: CheckpointStore | None = None):
    """The stage's MLflow run, ended FAILED if the stage raises; its status goes into the summary file.
    `sources` ({local path: what it stands for}) is what the run records in place of those paths
    (`MlflowTracker.name_sources`); they go into the summary file too, for the steps reading it. With a
    durable checkpoint `store`, the run an earlier attempt recorded there is reopened (a resumed stage logs
    into it), and a new run is recorded there; once the stage has finished, the store is removed."""
    earlier = store.recorded_run() if store and main_process() else ""
    run = tracking.tracker(run_name, output_dir, run_id=earlier, tags={STAGE_TAG: run_name, **(tags or {})})
    if store and main_process() and run.run_id != earlier:
        store.record_run(run.run_id)
    run.name_sources(sources or {})
    try:
        yield run
    except BaseException:
        run.close("FAILED")
        raise
    run.close("FINISHED")
    if store and store.durable and main_process():
        store.clear()
    if summary_file is not None and summary_file.exists() and main_process():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        summary["tracking"] = run.status()
        if sources:
            summary["sources"] = {path: source.replace(RUN_ID, run.run_id) for path, source in sources.items()}
        tmp = summary_file.with_name(summary_file.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, summary_file)


def _log_splits(run: MlflowTracker, data_dir: str, names, source: str = "") -> None:
    """The splits as dataset inputs; given `source` (where `data_dir` is recorded), each from the file in it."""
    for name in names:
        context = "training" if name.endswith("_train") else "evaluation"
        path = split_path(data_dir, name)
        run.log_dataset(path, name, context, source=f"{source}/{path.name}" if source else "")


def _log_output_dir(run: MlflowTracker, directory: str | Path) -> str:
    """The directory as the run's `model` artifact folder and as an MLflow model that MLflow can load
    and serve: a directory with a trained reward head as the reward pyfunc (`models/reward_pyfunc.py`),
    any other (a policy) as a transformers text-generation model. Returns the MLflow model's name."""
    from hydra_core.models import reward_pyfunc

    for entry in sorted(Path(directory).iterdir()):
        if entry.name not in LEFT_OUT:
            path = registry.MODEL_ARTIFACT
            run.log_artifact(entry, f"{path}/{entry.name}" if entry.is_dir() else path)
    if "reward" in saved_heads(directory):
        run.log_model(directory, registry.REWARD_MODEL, reward_pyfunc.REQUIREMENTS,
                      python_model=reward_pyfunc.__file__, artifact=reward_pyfunc.ARTIFACT,
                      code_paths=[Path(reward_pyfunc.__file__).parents[1]], leave_out=LEFT_OUT,
                      signature=reward_pyfunc.SIGNATURE)
        return registry.REWARD_MODEL
    run.log_model(directory, registry.LM_MODEL, POLICY_REQUIREMENTS)
    return registry.LM_MODEL


def _trained_elsewhere(train: Callable, cfg: SFTConfig | PPOConfig, run: MlflowTracker, summary_file: str,
                       curves_file: str) -> dict:
    """`train(cfg)` trains the stage somewhere else (a Kubeflow Trainer job of several nodes) and leaves its
    output in `cfg.output_dir`, untracked there; this run then records what the trainer records in a run of its
    own: the settings, every metric row of `metrics.jsonl` at its step, the finished stage's figures (params, one
    value each) and the curves. Returns the stage's summary."""
    train(cfg)
    out = Path(cfg.output_dir)
    params = to_dict(cfg)
    run.log_params(params)
    logged = set(params)  # MLflow refuses a param logged again with another value; a metric is no param
    for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        metrics = {k: v for k, v in row.items() if k not in ("step", "time") and v is not None}
        run.log_metrics(metrics, row["step"])
        logged |= set(metrics)
    summary = json.loads((out / summary_file).read_text(encoding="utf-8"))
    run.log_params({k: v for k, v in summary.items() if k not in logged and isinstance(v, (int, float, str))})
    if (out / curves_file).exists():
        run.log_artifact(out / curves_file)
    return summary


# --- the stages ------------------------------------------------------------------------------


def init_model(cfg: ModelInitConfig) -> Path:
    """A random-init base model of `cfg.preset` with its tokenizer, in Hugging Face format."""
    return build_base_model(cfg)


def base_model(model: str, preset: str | None = None) -> str:
    """`model` (a directory or a hub id), or when it is empty a fresh random-init `preset` model."""
    if model:
        return model
    values = {"output_dir": tempfile.mkdtemp(prefix="hydra-base-model-"), **({"preset": preset} if preset else {})}
    return str(init_model(build(ModelInitConfig, (values, lambda name: f"base {name}"))))


def typed_base_model(model: str, preset: str | None = None) -> str:
    """What a user named as the base model that `base_model(model, preset)` gives: `model` (a directory or
    a hub id), else `preset:<name>`; a run records this rather than the folder a preset was built in."""
    return model or f"preset:{preset or ModelInitConfig.preset}"


# a stage's own output directory, in a pipeline step: the run's artifact folder (`{run_id}`: the run's id)
OWN_OUTPUT = {"sft": f"runs:/{RUN_ID}/{registry.MODEL_ARTIFACT}", "ppo": f"runs:/{RUN_ID}/{registry.MODEL_ARTIFACT}",
              "eval": f"runs:/{RUN_ID}/eval", "data": f"runs:/{RUN_ID}/data"}


def prepare_data(cfg: DataConfig, tracking: Tracking, sources: dict | None = None) -> dict:
    """`prepare` in a `data-prep` run: params, split counts, the prepared files, every split as a dataset.
    `sources`: what the run records in place of local paths (`_stage_run`; a pipeline step's output
    directory: OWN_OUTPUT["data"])."""
    if cfg.tokenizer:  # before any work: a mistyped directory or an unreachable hub is one line
        check_model(cfg.tokenizer, "tokenizer")
    with _stage_run(tracking, "data-prep", cfg.output_dir, sources=sources) as run:
        manifest = prepare(cfg)
        counts = {f"data/{name}": n for name, n in manifest["counts"].items()}
        run.log_params({**to_dict(cfg), **counts})  # one value each: params, not one-point charts
        # the prepared files as the run's `data` folder: `runs:/<this run>/data` names them for the stages reading them
        for path in (Path(cfg.output_dir) / MANIFEST, *(split_path(cfg.output_dir, name) for name in SPLIT_FILES)):
            run.log_artifact(path, "data")
        _log_splits(run, cfg.output_dir, SPLIT_FILES, source=OWN_OUTPUT["data"])
    return {**manifest, **counts, "tracking": run.status()}


def sft(cfg: SFTConfig, tracking: Tracking, registered_model: str = "", sources: dict | None = None,
        train: Callable[[SFTConfig], None] | None = None) -> dict:
    """`run_sft` in a run named by its mode; the model directory is logged and, given a name, registered.
    `sources`: what the run records in place of local paths (`_stage_run`). `train`: trains elsewhere in
    place of `run_sft` here (`_trained_elsewhere`). Returns {} on the other processes of a distributed run."""
    run_name = SFT_RUN_NAMES[cfg.mode]
    registered = {}
    store = _checkpoints(cfg)
    _claim(cfg)
    with _exclusive(cfg.output_dir, cfg.STAGE), \
            _stage_run(tracking, run_name, cfg.output_dir, Path(cfg.output_dir) / SFT_SUMMARY, sources=sources,
                       store=store) as run:
        _log_splits(run, cfg.data, ("demos_train", "pairs_train"))
        summary = run_sft(cfg, run) if train is None else _trained_elsewhere(train, cfg, run, SFT_SUMMARY, SFT_CURVES)
        if summary:
            logged = _log_output_dir(run, cfg.output_dir)
            if registered_model:
                version = run.register_model(registered_model, logged, tags={
                    "variant": run_name, "data": cfg.data, "base_model": cfg.model, "run_id": run.run_id,
                    "pipeline_run_id": tracking.parent_run_id}, aliases=[registry.CANDIDATE])
                registered = {"registered_model": registered_model, "model_version": version}
    return {**summary, "tracking": {**run.status(), **registered}} if summary else {}


def ppo(cfg: PPOConfig, tracking: Tracking, sources: dict | None = None,
        train: Callable[[PPOConfig], None] | None = None) -> dict:
    """`run_ppo` in an `<algorithm>-<variant>` run (`ppo-hydra`, `grpo-hydra`); the policy directory is
    logged as the `model` artifact. `sources`: what the run records in place of local paths (`_stage_run`);
    `train`: trains elsewhere in place of `run_ppo` here (`_trained_elsewhere`). The summary it returns says
    how long the stage took (`stage_seconds`); {} on the other processes of a data-parallel run."""
    started = time.perf_counter()
    check_rollout_engine(cfg.rollout_engine)
    store = _checkpoints(cfg)
    _claim(cfg)
    with _exclusive(cfg.output_dir, cfg.STAGE), \
            _stage_run(tracking, f"{cfg.algorithm}-{cfg.variant}", cfg.output_dir, Path(cfg.output_dir) / PPO_SUMMARY,
                       tags={"variant": cfg.variant, "algorithm": cfg.algorithm}, sources=sources,
                       store=store) as run:
        _log_splits(run, cfg.data, ("prompts_train",))
        summary = run_ppo(cfg, run) if train is None else _trained_elsewhere(train, cfg, run, PPO_SUMMARY, PPO_CURVES)
        if summary:
            _log_output_dir(run, cfg.output_dir)
    return {**summary, "stage_seconds": time.perf_counter() - started, "tracking": run.status()} if summary else {}


def ppo_models(label: str, hydra_sft: str, sft: str = "", reward_model: str = "") -> dict[str, str | None]:
    """The `model` and `reward_model` settings PPO for run `label` starts from. Given a separately
    trained SFT model and reward model, a layout that keeps its reward model apart from the policy
    (`config.SEPARATE_MODEL_VARIANTS`: full, lora, lora-dynamic) starts from those two, as in the paper;
    otherwise, and always for hydra and j-hydra, PPO starts from Hydra-SFT (its reward head is the reward)."""
    if bool(sft) != bool(reward_model):
        raise ValueError("give both a separate SFT model and a reward model, or neither")
    if sft and uses_separate_models(label):
        return {"model": sft, "reward_model": reward_model}
    return {"model": hydra_sft, "reward_model": None}


def evaluate(cfg: EvalConfig, tracking: Tracking, tags: dict | None = None, sources: dict | None = None) -> dict:
    """`run_eval` in a `pairwise-eval` run, with the judgments as an MLflow table. `sources`: what the run
    records in place of local paths (`_stage_run`)."""
    check_rollout_engine(cfg.rollout_engine)
    out = Path(cfg.output_dir)
    # A rerun into the same folder is how the judge cache saves a paid judge's calls; two at once
    # would each pay for every judgment and overwrite each other's report.
    with _exclusive(out, cfg.STAGE), _stage_run(tracking, "pairwise-eval", out, out / EVAL_FILES["summary"],
                                                 tags=tags, sources=sources) as run:
        if Path(cfg.prompts).is_dir():
            _log_splits(run, cfg.prompts, ("prompts_eval",))
        summary = run_eval(cfg, run)
        run.log_table(out / EVAL_FILES["judgments"], "eval/judgments_table.json")
    return {**summary, "tracking": run.status()}


def export(cfg: ExportConfig) -> Path:
    """A Hydra directory's policy as a plain Hugging Face causal-LM directory."""
    model = load_hydra(cfg.model, heads=(), trust_remote_code=cfg.trust_remote_code)
    out = model.export_policy(cfg.output_dir)
    save_config(cfg, out)
    return out


def register_policy(tracking: Tracking, evaluation_dir: str, policy_run_id: str, registered_model: str,
                    champion_threshold: float, variant: str, record_dir: str | Path) -> dict:
    """`registry.register_policy` in a `register-<variant>` run, for the policy that `evaluation_dir`
    (an eval output) judged."""
    evaluation = json.loads((Path(evaluation_dir) / EVAL_FILES["summary"]).read_text(encoding="utf-8"))
    with _stage_run(tracking, f"register-{variant}", record_dir, tags={"variant": variant},
                    sources=evaluation.get("sources")) as run:
        run.log_params({"registered_model": registered_model, "champion_threshold": champion_threshold,
                        "policy_run_id": policy_run_id})
        metrics = metric_names(numeric_entries(evaluation, EVAL_METRICS))
        run.log_metrics(metrics, step=0)
        decision = registry.register_policy(run, evaluation, metrics, policy_run_id, registered_model,
                                            champion_threshold, variant, tracking.parent_run_id)
        run.set_tags({"decision": ",".join(decision["aliases"]) or "not registered"})
    return {**decision, "tracking": run.status()}


# (row key, title); the rows are pairwise_eval outputs' metadata: the eval's figures and the candidate's
COMPARISON_COLUMNS = (("variant", "label"), ("algorithm", "algorithm"), ("win_rate", "win-rate"),
                      ("win_rate_low", "low"), ("win_rate_high", "high"), ("wins", "W"), ("ties", "T"),
                      ("losses", "L"), ("errors", "E"), ("eval/gold_accuracy_before", "gold before"),
                      ("eval/gold_accuracy", "gold after"), ("memory/peak_bytes", "peak MiB"),
                      ("memory/trainable_params", "trainable"), ("time/s_per_sample", "s/sample"),
                      ("train_seconds", "train s"), ("stage_seconds", "stage s"))
BASELINES = {"hydra-sft": "Hydra-SFT", "sft": "SFT"}  # a model's `variant` -> how the table names it
COMPARISON_FILES = {"table": "comparison.md", "chart": "comparison.png"}


def comparison_rows(rows: list[dict]) -> list[dict]:
    """pairwise_eval outputs as table rows, best judged lower bound first. A policy's row names its
    run label and algorithm and the seconds its PPO loop trained; an SFT model's row (Hydra-SFT judged
    against the SFT model) has no algorithm and no gold accuracy before."""
    table = []
    for row in rows:
        row = dict(row)
        row.setdefault("algorithm", "-")
        if "train_seconds_this_run" in row:
            row["train_seconds"] = row["train_seconds_this_run"]
        table.append(row)
    return sorted(table, key=lambda r: -(r.get("win_rate_low") or 0.0))


def compare_variants(tracking: Tracking, rows: list[dict], record_dir: str | Path, registered_model: str = "",
                     versions: list[str] = (), champion_threshold: float = registry.CHAMPION_THRESHOLD) -> str:
    """The variants side by side, best lower bound first, as Markdown, and as a chart (win-rate with its
    interval, gold accuracy before and after) beside it in `record_dir`; both logged to the pipeline's
    run (with per-variant metrics), which is then closed. Every row was judged against one baseline,
    named in the title. Given the registered `versions` of the variants, the aliases are settled on
    the best of them (`registry.settle_aliases`)."""
    ranked = comparison_rows(rows)
    baselines = sorted({str(r.get("baseline", "hydra-sft")) for r in ranked}) or ["hydra-sft"]
    against = " and ".join(BASELINES.get(b, b) for b in baselines)
    lines = [f"# PPO variants against the {against} baseline", "",
             "| " + " | ".join(title for _, title in COMPARISON_COLUMNS) + " |",
             "|" + "---|" * len(COMPARISON_COLUMNS)]
    for row in ranked:
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _ in COMPARISON_COLUMNS) + " |")
    settled = registry.settle_aliases(tracking, registered_model, list(versions), champion_threshold)
    text = "\n".join([*lines, *(["", settled] if settled else [])]) + "\n"
    record_dir = Path(record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    table = record_dir / COMPARISON_FILES["table"]
    table.write_text(text, encoding="utf-8")
    chart = plot_comparison(ranked, record_dir / COMPARISON_FILES["chart"], title=f"judged against {against}")
    if tracking.parent_run_id:
        run = tracking.top_level().tracker("pipeline", record_dir, run_id=tracking.parent_run_id,
                                           system_metrics=False)
        for row in ranked:
            variant = row.get("variant", "policy")
            figures = metric_names(numeric_entries(row, EVAL_METRICS))
            run.log_metrics({f"{variant}/{name}": value for name, value in figures.items()}, step=0)
        for path in (table, chart):
            if path is not None:
                run.log_artifact(path)
        run.close("FINISHED")
    return text


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "memory/peak_bytes":
        return f"{value / 2**20:.0f}"
    if key.endswith("seconds"):
        return f"{value:.0f}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)
