"""Where a stage's MLflow run goes, and the life of a pipeline's parent run.

`Tracking` says where runs go (tracking URI, experiment, the parent run to nest under, tags) and
opens a stage's run there. A pipeline run has a parent run that its steps nest under, which records
the pipeline's parameters and what ran (`provenance`): opened by a step of its own that is never
cached (`open_pipeline_run`) and, however the job ends, its leftovers closed by the exit step
(`close_pipeline_run`), which finds them by the job name tagged on the parent. Where Kubeflow's
MLflow integration (KEP-12862) has opened a run for the pipeline run, the steps nest under that one.

The steps whose outputs the cache may reuse (data prep, SFT) take nothing that changes from one
pipeline run to the next, so not the parent run's id either: they log top-level runs, and the first
step that reads their outputs nests those runs under its parent (`nest_reused_runs`). In a DAG with no
step of its own for the parent run, data prep opens one and ends it (`pipeline_run`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Iterator, Mapping

from hydra_core.tracking.mlflow_tracker import (
    DEFAULT_EXPERIMENT, PARENT_TAG, PENDING_DIR, MlflowTracker, connect, redact)

PIPELINE_JOB_TAG = "hydra_rlhf.pipeline_job"  # on the parent run: the Kubeflow job it records
STAGE_TAG = "hydra_rlhf.stage"
PIPELINE_STATE_TAG = "hydra_rlhf.pipeline_state"  # how the job ended (RESUMED: a later run continues it)
KFP_RUN_TAG, KFP_LINK_TAG = "hydra_rlhf.kfp_run_id", "hydra_rlhf.kfp_run_url"
REUSED_TAG = "hydra_rlhf.reused."  # + a reused step's run name, on the parent run: that run's id
# Set in the image when it is built (containers/Dockerfile): the code's commit and the image's own name
IMAGE_COMMIT_VARIABLE, IMAGE_VARIABLE = "HYDRA_RLHF_GIT_COMMIT", "HYDRA_RLHF_BUILT_IMAGE"
# In a pipeline step's output artifact metadata: the parent run that the steps reading it nest under
# (it travels with the data, so no step inside a ParallelFor needs an upstream step's parameter).
PIPELINE_RUN_KEY = "pipeline_run_id"


def main_process() -> bool:
    """In a distributed run only rank 0 records."""
    return os.environ.get("RANK", "0") == "0"


@dataclass
class Tracking:
    """Where runs go. An empty `uri` means $MLFLOW_TRACKING_URI, and no tracking if that is unset too."""

    uri: str = ""
    experiment: str = ""  # "" = $MLFLOW_EXPERIMENT_NAME, else DEFAULT_EXPERIMENT
    parent_run_id: str = ""
    tags: dict = field(default_factory=dict)

    @property
    def resolved_uri(self) -> str:
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI", "")

    @property
    def resolved_experiment(self) -> str:
        return self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)

    def tracker(self, run_name: str, record_dir: str | Path, *, run_id: str = "", tags: dict | None = None,
                system_metrics: bool = True) -> MlflowTracker:
        """A run named `run_name` (or run `run_id` reopened); what cannot be sent waits in `record_dir`."""
        return MlflowTracker(self.resolved_uri if main_process() else "", run_name, Path(record_dir) / PENDING_DIR,
                             experiment=self.resolved_experiment, parent_run_id=self.parent_run_id, run_id=run_id,
                             tags={**self.tags, **(tags or {})}, system_metrics=system_metrics)

    def top_level(self) -> "Tracking":
        return dataclasses.replace(self, parent_run_id="")


def cluster_run_id(tracking: Tracking) -> str:
    """The run Kubeflow's MLflow integration (KEP-12862) opened for this pipeline run, "" when none: it
    passes MLFLOW_RUN_ID and MLFLOW_TRACKING_URI to every task. Only a run on the server in use counts."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return os.environ.get("MLFLOW_RUN_ID", "") if uri and tracking.resolved_uri == uri else ""


def _new_parent_run(tracking: Tracking, job_name: str) -> MlflowTracker:
    """A parent run that could not be created is not journaled (it would hold nothing but its name):
    the stages' own journals then replay as top-level runs."""
    return tracking.top_level().tracker(job_name or "hydra-rlhf", tempfile.mkdtemp(prefix="hydra-pipeline-run-"),
                                        tags={STAGE_TAG: "pipeline", PIPELINE_JOB_TAG: job_name},
                                        system_metrics=False)


@contextmanager
def pipeline_run(tracking: Tracking, job_name: str) -> Iterator[str]:
    """The parent run for the block's stage to nest under, in a DAG with no step of its own for it:
    `tracking.parent_run_id` when given, else the cluster's run, else a new one named `job_name`, which
    the block ends (FAILED if the block raises)."""
    existing = tracking.parent_run_id or cluster_run_id(tracking)
    if existing:
        yield existing
        return
    run = _new_parent_run(tracking, job_name)
    try:
        yield run.run_id
    except BaseException:
        run.close("FAILED")
        raise
    run.close()


def _checkout_commit() -> str:
    """The commit of the checkout this package runs from ("+dirty" when tracked files changed), "" when it
    is not one (an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return ""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance() -> dict[str, str]:
    """Tags naming the code that ran: the package's version, its git commit (the image's, fixed when it
    was built, else the checkout's) and the image it ran in (none for local processes)."""
    commit = os.environ.get(IMAGE_COMMIT_VARIABLE) or _checkout_commit()
    tags = {"hydra_rlhf.version": installed_version("hydra-rlhf"),
            "hydra_rlhf.image": os.environ.get(IMAGE_VARIABLE, "")}
    if commit:  # the tag MLflow's UI shows as the run's source version
        tags["mlflow.source.git.commit"] = commit
    return {name: value for name, value in tags.items() if value}


def open_pipeline_run(tracking: Tracking, job_name: str, parameters: Mapping, tags: Mapping[str, str]) -> str:
    """Open the pipeline's parent run and leave it open for the steps to nest under (the compare step ends
    it, or the exit step if the job fails): the cluster's run where Kubeflow opened one, else a new one
    tagged with `job_name`. It records the pipeline's `parameters` (lists and dicts as JSON), `tags` and
    `provenance()`. Returns its id, "" when tracking is off."""
    existing = tracking.parent_run_id or cluster_run_id(tracking)
    run = (tracking.top_level().tracker("", tempfile.mkdtemp(prefix="hydra-pipeline-run-"), run_id=existing,
                                        system_metrics=False)
           if existing else _new_parent_run(tracking, job_name))
    run.log_params({name: json.dumps(value) if isinstance(value, (list, dict)) else value
                    for name, value in parameters.items()})
    run.set_tags({**provenance(), **tags})
    return run.run_id


def kfp_run_tags(run_id: str, ui_url: str = "", images=()) -> dict[str, str]:
    """The parent run's tags for the KFP run it records: its id, a link to it given the KFP UI's address, and
    the images the spec names."""
    tags = {KFP_RUN_TAG: run_id, "hydra_rlhf.spec_images": ", ".join(images)}
    if ui_url and run_id:
        tags[KFP_LINK_TAG] = f"{ui_url.rstrip('/')}/#/runs/details/{run_id}"
    return {name: value for name, value in tags.items() if value}


def parent_from(given: str, *inputs: Mapping | None) -> str:
    """The parent run a step nests under: `given`, else the first of its inputs' artifact metadata that
    names one (an input left out is None)."""
    return given or next((meta[PIPELINE_RUN_KEY] for meta in inputs if meta and meta.get(PIPELINE_RUN_KEY)), "")


def nest_reused_runs(tracking: Tracking, *inputs: Mapping | None) -> list[str]:
    """Nest the runs that recorded a step's inputs (their artifacts' `mlflow` metadata) under
    `tracking.parent_run_id` when they have no parent yet: the cacheable steps log top-level runs. A run
    that already has one (an output the cache took from an earlier pipeline run) stays where it was
    recorded, and the parent run names it in a REUSED_TAG tag. Returns the ids it nested."""
    uri, parent = tracking.resolved_uri, tracking.parent_run_id
    ids = {meta["mlflow"]["run_id"] for meta in inputs if meta and (meta.get("mlflow") or {}).get("run_id")}
    if not uri or not parent or not ids:
        return []
    nested = []
    try:
        client = connect(uri)
        for run_id in sorted(ids - {parent}):
            run = client.get_run(run_id)
            own = run.data.tags.get(PARENT_TAG, "")
            if not own:
                client.set_tag(run_id, PARENT_TAG, parent)
                nested.append(run_id)
            elif own != parent:
                client.set_tag(parent, REUSED_TAG + (run.info.run_name or run_id), run_id)
    except Exception as e:  # noqa: BLE001 - tracking trouble must not fail the step that reads the inputs
        warnings.warn(f"MLflow at {redact(uri)}: the runs of this step's inputs could not be nested under "
                      f"{parent} ({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)
    return nested


def reopen_pipeline_run(tracking: Tracking, job_name: str) -> str:
    """Set the parent run of pipeline job `job_name` running again, for a run that continues that job (a local
    `run --resume`); its steps nest under it and its compare step ends it. Returns its id, "" when none."""
    uri = tracking.resolved_uri
    if not uri:
        return ""
    client = connect(uri)
    experiment = client.get_experiment_by_name(tracking.resolved_experiment)
    found = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{PIPELINE_JOB_TAG}` = '{job_name}'"
                               ) if experiment else []
    for parent in found:
        client.set_tag(parent.info.run_id, PIPELINE_STATE_TAG, "RESUMED")
        client.update_run(parent.info.run_id, status="RUNNING")
    return found[0].info.run_id if found else ""


def close_pipeline_run(tracking: Tracking, job_name: str, state: str, error: str = "") -> list[str]:
    """End the MLflow runs of pipeline job `job_name` that are still open, however the job ended.

    The pipeline's exit step. Only the compare step closes the parent run, so after a failed step
    it would stay RUNNING, as would the run of a step that was killed (out of memory, evicted).
    The parent ends FINISHED when `state` is SUCCEEDED and FAILED otherwise, an open stage run
    KILLED; each gets the job's final state (and its error) as tags. Returns the ids it ended.
    """
    uri = tracking.resolved_uri
    if not uri or not job_name:
        return []
    ended = []
    try:
        client = connect(uri)
        experiment = client.get_experiment_by_name(tracking.resolved_experiment)
        if experiment is None:  # the job failed before data prep recorded anything
            return []
        ids = [experiment.experiment_id]
        for parent in client.search_runs(ids, filter_string=f"tags.`{PIPELINE_JOB_TAG}` = '{job_name}'"):
            stages = client.search_runs(ids, filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
            for run in [*stages, parent]:
                if run.info.status != "RUNNING":
                    continue
                client.set_tag(run.info.run_id, PIPELINE_STATE_TAG, state)
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
