"""`hydra-rlhf run`: the whole pipeline on this machine, each step in a local process (kfp's SubprocessRunner,
this Python: the default) or in a container of the project's CPU image (kfp's DockerRunner, `--runner docker`:
the steps run as they do on a cluster, in the image that containers/build.sh built).

Everything lands in one output folder: the kfp pipeline root (each task's artifacts), the kfp
workspace, a log file per step in `logs/` (the terminal gets a line per step: pipelines.console),
the training steps' checkpoints in `checkpoints/` (unless `checkpoint_uri` says where), the steps that
finished in `cache/` (kfp's local cache), what the run was started with in `run.json`, and, unless a
tracking URI is given or MLFLOW_TRACKING_URI names one, the MLflow store: `mlflow.db` with its artifacts
in `mlartifacts/`.

`run --resume <output folder>` continues a run that failed or was killed, with the settings it was started
with: the steps that finished are taken from the cache (their outputs stay where they were written), in the
same MLflow parent run with the same registered versions, and a training step that had written a checkpoint
resumes from it, in its own MLflow run (hydra_core.checkpoint_store). In containers these are at the same paths as here, mounted, and the
steps run as this user, so the files are this user's and `mlflow ui` browses the same store either way.
"""

import json
import os
import time
import warnings
from pathlib import Path

from kfp import local

from hydra_core.config.settings import check_rollout_engine
from components.trainjob_settings import BACKEND_VARIABLE
from pipelines.arguments import check_shared_storage
from pipelines.console import ANSI, console_for
from pipelines.hydra_rlhf import build
from pipelines.runners import RUNNERS, docker_runner

RUN_RECORD = "run.json"  # the arguments and runner a run was started with, its job and how it ended


def local_pipeline():
    """One variant at a time: on one machine the variants would share its cores, each slowing the others,
    and the comparison table reports every variant's own time."""
    return build(parallelism=1, cluster=False)


class PipelineFailed(RuntimeError):
    """A step failed; the exit step has still closed the job's MLflow runs. `log` is the failed
    step's log file (None when no step failed: kfp itself did), `tail` its last lines."""

    def __init__(self, message: str, output_dir: Path, tracking_uri: str, log: Path | None = None,
                 tail: tuple[str, ...] = ()):
        super().__init__(message)
        self.output_dir, self.tracking_uri, self.log, self.tail = output_dir, tracking_uri, log, tail


def default_output_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _recorded(out: Path) -> dict:
    """The record of the run in output folder `out`, for `--resume`; a ValueError in one line when there is none
    to continue."""
    path = out / RUN_RECORD
    if not path.is_file():
        raise ValueError(f"--resume {out}: no {RUN_RECORD} there; give the output folder of an earlier hydra-rlhf run")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("state") == "succeeded":
        raise ValueError(f"--resume {out}: that run finished; there is nothing to continue")
    return record


def _write_record(out: Path, record: dict) -> None:
    tmp = out / (RUN_RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, out / RUN_RECORD)


def run_local(arguments: dict | None = None, output_dir: str | Path | None = None,
              verbose: bool = False, runner: str = "subprocess", resume: str | Path | None = None) -> dict:
    """Run the pipeline with `arguments`; returns where its outputs, logs and MLflow records are.
    `verbose`: the terminal gets every line of every step, as kfp prints them. `runner`: one of RUNNERS;
    RunnerUnavailable before any work when it cannot run here. `resume`: the output folder of a run to
    continue, with its own arguments and runner (then `arguments`, `output_dir` and `runner` are not given)."""
    record = _recorded(Path(resume).resolve()) if resume else None
    if record:
        arguments, output_dir, runner = record["arguments"], resume, record["runner"]
    if runner not in RUNNERS:
        raise ValueError(f"--runner {runner}: expected one of {', '.join(RUNNERS)}")
    container_jobs = os.environ.get(BACKEND_VARIABLE) == "container" and runner == "subprocess"
    check_shared_storage(arguments or {}, container_jobs, f"a local run creates one only on this machine's Docker: "
                         f"set {BACKEND_VARIABLE}=container (with --runner subprocess)")
    if runner == "subprocess" and not container_jobs:  # every step runs in this Python: its vLLM is theirs
        check_rollout_engine((arguments or {}).get("ppo_rollout_engine", ""), "-p ppo_rollout_engine=vllm")
    out = Path(output_dir or default_output_dir()).resolve()
    if "kfp-workspace" in str(out):  # kfp 2.17 rewrites any path containing it as a workspace path
        raise ValueError(f"{out}: the output folder's path must not contain 'kfp-workspace'")
    if not record and (out / RUN_RECORD).exists():  # its cache would hand this run the earlier one's steps
        raise ValueError(f"--output-dir {out}: holds an earlier run ({RUN_RECORD}); continue it with --resume {out}, "
                         "or choose another folder")
    arguments = dict(arguments or {})
    arguments["tracking_uri"] = (arguments.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
                                 or f"sqlite:///{out / 'mlflow.db'}")
    arguments["checkpoint_uri"] = arguments.get("checkpoint_uri") or str(out / "checkpoints")
    if runner == "docker":
        uri = arguments["tracking_uri"]
        if uri.startswith("sqlite:///"):  # a relative path would name a folder in the container's cwd
            arguments["tracking_uri"] = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
        kfp_runner = docker_runner(arguments["tracking_uri"])
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
    root = out / "pipeline"
    # made here, not by the Docker daemon for its mounts, which would leave them root's and unwritable by the steps
    for folder in (root, out / "workspace"):
        folder.mkdir(parents=True, exist_ok=True)
    local.init(runner=kfp_runner, pipeline_root=str(root), workspace_root=str(out / "workspace"),
               enable_caching=True, cache_root=str(out / "cache"))
    record = record or {"arguments": arguments, "runner": runner}
    earlier = set(root.iterdir())
    _write_record(out, {**record, "state": "running"})
    if record.get("job"):
        from hydra_core.tracking.runs import Tracking, reopen_pipeline_run

        tracking = Tracking(arguments["tracking_uri"], arguments.get("experiment", ""))
        reopen_pipeline_run(tracking, record["job"])
    pipeline = local_pipeline()
    started = time.perf_counter()
    with warnings.catch_warnings(), console_for(out / "logs", verbose) as console:
        # The components name the project's image, not a "python" one; here they run in this Python.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        # Resources and secrets are for the cluster; the local runner says so once per task.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            pipeline(**arguments)
        except RuntimeError as e:  # kfp's local runner reports a failed task so, after the exit step
            _write_record(out, {**record, "job": record.get("job") or _job(root, earlier), "state": "failed"})
            if record.get("job"):  # the exit step ended this job's runs; the run it continues is the first job's
                from hydra_core.tracking.runs import close_pipeline_run

                close_pipeline_run(tracking, record["job"], "FAILED", ANSI.sub("", str(e)))
            log, tail = (console.failed[0].log, tuple(console.failed[0].tail)) if console.failed else (None, ())
            raise PipelineFailed(ANSI.sub("", str(e)), out, arguments["tracking_uri"], log, tail) from None
    run_dir = root / _job(root, earlier)
    _write_record(out, {**record, "job": record.get("job") or run_dir.name, "state": "succeeded"})
    return {
        "seconds": time.perf_counter() - started,
        "output_dir": out,
        "run_dir": run_dir,
        "comparison": next(run_dir.glob("**/comparison"), None),
        "reports": sorted(root.glob("*/**/pairwise-eval*/report")),  # a resumed run's earlier ones too
        "logs": out / "logs",
        "tracking_uri": arguments["tracking_uri"],
    }


def _job(root: Path, earlier: set[Path]) -> str:
    """The kfp job this call ran: the folder it added to the pipeline root (kfp names it after the job); "" when
    it failed before adding one."""
    added = set(root.iterdir()) - earlier
    return max(added, key=lambda p: p.stat().st_mtime).name if added else ""


def browse_command(tracking_uri: str) -> str:
    """How to look at the MLflow records of a run."""
    if tracking_uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {tracking_uri}"
    return f"open {tracking_uri} in a browser"
