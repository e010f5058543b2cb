"""`hydra-rlhf run`: the whole pipeline in local processes (kfp's SubprocessRunner, this Python).

Everything lands in one output folder: the kfp pipeline root (each task's artifacts), the kfp
workspace, a log file per step in `logs/` (the terminal gets a line per step: pipelines.console),
and, unless a tracking URI is given or MLFLOW_TRACKING_URI names one, the MLflow store: `mlflow.db`
with its artifacts in `mlartifacts/`.
"""

import os
import time
import warnings
from pathlib import Path

from kfp import local

from pipelines.console import ANSI, console_for
from pipelines.hydra_rlhf import build

# One variant at a time: on one machine the variants would share its cores, each slowing the others,
# and the comparison table reports every variant's own time.
hydra_rlhf = build(parallelism=1, cluster=False)


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
              verbose: bool = False) -> dict:
    """Run the pipeline with `arguments`; returns where its outputs, logs and MLflow records are.
    `verbose`: the terminal gets every line of every step, as kfp prints them."""
    out = Path(output_dir or default_output_dir()).resolve()
    if "kfp-workspace" in str(out):  # kfp 2.17 rewrites any path containing it as a workspace path
        raise ValueError(f"{out}: the output folder's path must not contain 'kfp-workspace'")
    out.mkdir(parents=True, exist_ok=True)
    arguments = dict(arguments or {})
    arguments["tracking_uri"] = (arguments.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
                                 or f"sqlite:///{out / 'mlflow.db'}")
    root = out / "pipeline"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               workspace_root=str(out / "workspace"))
    started = time.perf_counter()
    with warnings.catch_warnings(), console_for(out / "logs", verbose) as console:
        # The components name the project's image, not a "python" one; here they run in this Python.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        # Resources and secrets are for the cluster; the local runner says so once per task.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            hydra_rlhf(**arguments)
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
