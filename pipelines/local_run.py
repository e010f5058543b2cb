"""`hydra-rlhf run`: the whole pipeline on this machine, each step in a local process (kfp's SubprocessRunner,
this Python: the default) or in a container of the project's CPU image (kfp's DockerRunner, `--runner docker`:
the steps run as they do on a cluster, in the image that containers/build.sh built).

Everything lands in one output folder: the kfp pipeline root (each task's artifacts), the kfp
workspace, a log file per step in `logs/` (the terminal gets a line per step: pipelines.console),
and, unless a tracking URI is given or MLFLOW_TRACKING_URI names one, the MLflow store: `mlflow.db`
with its artifacts in `mlartifacts/`. In containers these are at the same paths as here, mounted, and the
steps run as this user, so the files are this user's and `mlflow ui` browses the same store either way.
"""

import os
import time
import warnings
from pathlib import Path

from kfp import local

from components.trainjob_settings import BACKEND_VARIABLE
from pipelines.arguments import check_shared_storage
from pipelines.console import ANSI, console_for
from pipelines.hydra_rlhf import build
from pipelines.runners import RUNNERS, docker_runner


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


def run_local(arguments: dict | None = None, output_dir: str | Path | None = None,
              verbose: bool = False, runner: str = "subprocess") -> dict:
    """Run the pipeline with `arguments`; returns where its outputs, logs and MLflow records are.
    `verbose`: the terminal gets every line of every step, as kfp prints them. `runner`: one of RUNNERS;
    RunnerUnavailable before any work when it cannot run here."""
    if runner not in RUNNERS:
        raise ValueError(f"--runner {runner}: expected one of {', '.join(RUNNERS)}")
    container_jobs = os.environ.get(BACKEND_VARIABLE) == "container" and runner == "subprocess"
    check_shared_storage(arguments or {}, container_jobs, f"a local run creates one only on this machine's Docker: "
                         f"set {BACKEND_VARIABLE}=container (with --runner subprocess)")
    out = Path(output_dir or default_output_dir()).resolve()
    if "kfp-workspace" in str(out):  # kfp 2.17 rewrites any path containing it as a workspace path
        raise ValueError(f"{out}: the output folder's path must not contain 'kfp-workspace'")
    arguments = dict(arguments or {})
    arguments["tracking_uri"] = (arguments.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
                                 or f"sqlite:///{out / 'mlflow.db'}")
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
    local.init(runner=kfp_runner, pipeline_root=str(root),
               workspace_root=str(out / "workspace"))
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
            log, tail = (console.failed[0].log, tuple(console.failed[0].tail)) if console.failed else (None, ())
            raise PipelineFailed(ANSI.sub("", str(e)), out, arguments["tracking_uri"], log, tail) from None
    run_dir = max(root.iterdir(), key=lambda p: p.stat().st_mtime)
    return {
        "seconds": time.perf_counter() - started,
        "output_dir": out,
        "run_dir": run_dir,
        "comparison": next(run_dir.glob("**/comparison"), None),
        "reports": sorted(run_dir.glob("**/pairwise-eval*/report")),
        "logs": out / "logs",
        "tracking_uri": arguments["tracking_uri"],
    }


def browse_command(tracking_uri: str) -> str:
    """How to look at the MLflow records of a run."""
    if tracking_uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {tracking_uri}"
    return f"open {tracking_uri} in a browser"
