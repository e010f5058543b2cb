"""How each stage runs end to end: the one place the CLI and the Kubeflow components both call.

A stage function runs one hydra_core stage in an MLflow run (nested under the pipeline's run when
there is one) and records what the stage does not record itself: its data as MLflow dataset
inputs, its output directory as the `model` artifact and a registered model version, the
judgments as a table. It returns the stage's summary plus a `tracking` entry (state, run id,
where pending records wait), which also goes into the stage's summary file.

The pipeline's record-keeping steps after evaluation (registering, comparing) are in `hydra_core.selection`,
and the stage's MLflow run itself in `hydra_core.stage_run`.
"""

from __future__ import annotations

import fcntl
import json
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
from hydra_core.eval.runner import run_eval
from hydra_core.models.hydra import load_hydra, saved_heads
from hydra_core.models.presets import build_base_model
from hydra_core.models.reference import check_model
from hydra_core.ppo.trainer import CURVES_FILE as PPO_CURVES
from hydra_core.ppo.trainer import SUMMARY_FILE as PPO_SUMMARY
from hydra_core.ppo.trainer import run_ppo
from hydra_core.sft.trainer import CURVES_FILE as SFT_CURVES
from hydra_core.sft.trainer import SUMMARY_FILE as SFT_SUMMARY
from hydra_core.sft.trainer import run_sft
from hydra_core.stage_run import stage_run
from hydra_core.tracking.mlflow_tracker import PENDING_DIR, RUN_ID, MlflowTracker
from hydra_core.tracking.runs import Tracking, main_process

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
    `sources`: what the run records in place of local paths (`stage_run`; a pipeline step's output
    directory: OWN_OUTPUT["data"])."""
    if cfg.tokenizer:  # before any work: a mistyped directory or an unreachable hub is one line
        check_model(cfg.tokenizer, "tokenizer")
    with stage_run(tracking, "data-prep", cfg.output_dir, sources=sources) as run:
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
    `sources`: what the run records in place of local paths (`stage_run`). `train`: trains elsewhere in
    place of `run_sft` here (`_trained_elsewhere`). Returns {} on the other processes of a distributed run."""
    run_name = SFT_RUN_NAMES[cfg.mode]
    registered = {}
    store = _checkpoints(cfg)
    _claim(cfg)
    with _exclusive(cfg.output_dir, cfg.STAGE), \
            stage_run(tracking, run_name, cfg.output_dir, Path(cfg.output_dir) / SFT_SUMMARY, sources=sources,
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
    logged as the `model` artifact. `sources`: what the run records in place of local paths (`stage_run`);
    `train`: trains elsewhere in place of `run_ppo` here (`_trained_elsewhere`). The summary it returns says
    how long the stage took (`stage_seconds`); {} on the other processes of a data-parallel run."""
    started = time.perf_counter()
    check_rollout_engine(cfg.rollout_engine)
    store = _checkpoints(cfg)
    _claim(cfg)
    with _exclusive(cfg.output_dir, cfg.STAGE), \
            stage_run(tracking, f"{cfg.algorithm}-{cfg.variant}", cfg.output_dir, Path(cfg.output_dir) / PPO_SUMMARY,
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
    records in place of local paths (`stage_run`)."""
    check_rollout_engine(cfg.rollout_engine)
    out = Path(cfg.output_dir)
    # A rerun into the same folder is how the judge cache saves a paid judge's calls; two at once
    # would each pay for every judgment and overwrite each other's report.
    with _exclusive(out, cfg.STAGE), stage_run(tracking, "pairwise-eval", out, out / EVAL_FILES["summary"],
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
