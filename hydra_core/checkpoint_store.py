"""Where a training stage's checkpoints live, so that they outlive the process (or the pod) that wrote them.

Without a `checkpoint_uri` they are in the stage's output folder (`<output_dir>/checkpoints`), as before: a rerun
into the same folder resumes them with `--resume`. With one, they are in that location, which a retried or
resubmitted step given the same location finds:
- a folder (a mounted volume such as the pipeline's workspace, or `file://`): written there directly;
- any other fsspec URL (`s3://`, `gs://`, `memory://`, ...): written in the output folder first, then each
  complete checkpoint copied there, its `state.json` last, so that a copy cut short is never taken for a
  complete one; the newest complete one is copied back before the stage starts.

A stage given a location resumes whatever checkpoint it finds there (that is what a retry needs), and removes
the location when it has finished. The location also keeps the id of the stage's MLflow run, so that a resumed
stage goes on logging into the run it started (`recorded_run`, `record_run`).

The pipeline gives each training step a location of its own (`step_location`): one per step label and the
step's inputs, the same for every attempt of a task and different for another pipeline run (see there).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from hydra_core import checkpoint

RUN_RECORD = "mlflow_run.json"  # the stage's MLflow run, for a resumed attempt to log into
PROBE = ".hydra-rlhf-write-test"


def _filesystem(uri: str):
    import fsspec.core

    return fsspec.core.url_to_fs(uri)


def uri_problem(uri: str) -> str:
    """Why checkpoints cannot go to `uri` ("" when they can): an unknown scheme, a storage driver that is not
    installed, or a location this process cannot write. Writes and removes a small file to find out."""
    try:
        fs, path = _filesystem(uri)
    except ValueError as e:  # fsspec: "Protocol not known: foo"
        return f"{e}; use a folder or a URL of a storage that fsspec knows (s3://, gs://, file://, ...)"
    except ImportError as e:  # fsspec names the driver to install: "Install s3fs to access S3"
        return str(e)
    probe = f"{path.rstrip('/')}/{PROBE}"
    try:
        fs.makedirs(path, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - permissions, a read-only mount, credentials, an unknown bucket, ...
        return f"cannot be written ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no detail'})"
    return ""


def step_location(base: str, label: str, inputs: dict) -> str:
    """The checkpoint location of one pipeline step under `base`: named by the step's `label` and a digest of
    its `inputs` (parameter values, and input artifacts by their URI). Every attempt of a task has the same
    inputs, so a retry finds the checkpoints of the attempt before it; a PPO step of another pipeline run reads
    that run's own parent-run artifact, so it does not. A cached step (data prep, SFT) takes nothing that differs
    between runs, so a run with exactly its inputs finds the checkpoints of one that failed in it: the same
    computation, which is what KFP's cache would hand over too."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{base.rstrip('/')}/{label}-{digest}"


class CheckpointStore:
    """The checkpoints of one stage run: `local` is the folder `hydra_core.checkpoint` writes under and reads
    from; with a remote `uri`, `pull` and `push` copy them from and to it."""

    def __init__(self, uri: str, output_dir: str | Path):
        self.uri = uri
        self.fs, self.path = _filesystem(uri) if uri else (None, "")
        self.remote = bool(uri) and "file" not in _protocols(self.fs)
        self.local = Path(self.path) if uri and not self.remote else Path(output_dir)

    @property
    def durable(self) -> bool:
        """Whether the checkpoints outlive the output folder; a stage then resumes whatever it finds."""
        return bool(self.uri)

    def _remote(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def pull(self) -> None:
        """Copy the newest complete remote checkpoint into `local`, unless `local` holds it already."""
        if not self.remote:
            return
        root = self._remote(checkpoint.DIRECTORY)
        if not self.fs.exists(root):
            return
        for step in sorted((Path(p).name for p in self.fs.ls(root, detail=False)), reverse=True):
            if self.fs.exists(self._remote(checkpoint.DIRECTORY, step, checkpoint.STATE)):
                target = self.local / checkpoint.DIRECTORY / step
                if not (target / checkpoint.STATE).exists():
                    shutil.rmtree(target, ignore_errors=True)
                    self.fs.get(self._remote(checkpoint.DIRECTORY, step) + "/", str(target) + "/", recursive=True)
                return

    def push(self, saved: Path) -> None:
        """Copy checkpoint folder `saved` (just written under `local`) to the remote location, its state file
        last; keep there as many as `hydra_core.checkpoint` keeps."""
        if not self.remote:
            return
        target = self._remote(checkpoint.DIRECTORY, saved.name)
        files = sorted(p for p in saved.rglob("*") if p.is_file() and p.name != checkpoint.STATE)
        for path in [*files, saved / checkpoint.STATE]:
            self.fs.put_file(str(path), f"{target}/{path.relative_to(saved).as_posix()}")
        kept = {p.name for p in (self.local / checkpoint.DIRECTORY).glob("step-*")}
        for old in self.fs.ls(self._remote(checkpoint.DIRECTORY), detail=False):
            if Path(old).name not in kept:
                self.fs.rm(old, recursive=True)

    def recorded_run(self) -> str:
        """The MLflow run id an earlier attempt recorded here ("" when none did)."""
        if not self.durable:
            return ""
        record = self._remote(RUN_RECORD)
        return json.loads(self.fs.cat_file(record))["run_id"] if self.fs.exists(record) else ""

    def record_run(self, run_id: str) -> None:
        if self.durable and run_id:
            self.fs.makedirs(self.path, exist_ok=True)
            self.fs.pipe_file(self._remote(RUN_RECORD), json.dumps({"run_id": run_id}).encode())

    def clear(self) -> None:
        """Remove the checkpoints (and the run record): the stage has finished."""
        shutil.rmtree(self.local / checkpoint.DIRECTORY, ignore_errors=True)
        if self.durable and self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)


RESUMED_TAG = "hydra_rlhf.resumed_from_step"
RESUMED_PARAM = "resumed_from_step"


def announce_resume(tracker, path: Path, step: int) -> None:
    """Say that the stage goes on from checkpoint `path` at `step`: in its log, and in its run as a tag (moved by
    a later resume) and a param (the first resume's: MLflow keeps a param's first value)."""
    print(f"resumed from {path} (step {step})", flush=True)
    tracker.set_tags({RESUMED_TAG: step})
    tracker.log_params({RESUMED_PARAM: step})


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
