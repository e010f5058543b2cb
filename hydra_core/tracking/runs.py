"""Where a stage's MLflow run goes, and the life of a pipeline's parent run.

`Tracking` says where runs go (tracking URI, experiment, the parent run to nest under, tags) and
opens a stage's run there. A pipeline run has a parent run that its steps nest under: opened by
the first step (`pipeline_run`) and, however the job ends, its leftovers closed by the exit
step (`close_pipeline_run`), which finds them by the job name tagged on the parent. In a DAG
without that exit step the first step ends the parent run itself. Where Kubeflow's MLflow
integration (KEP-12862) has opened a run for the pipeline run, the steps nest under that one.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from hydra_core.tracking.mlflow_tracker import DEFAULT_EXPERIMENT, PENDING_DIR, MlflowTracker, connect, redact

PIPELINE_JOB_TAG = "hydra_rlhf.pipeline_job"  # on the parent run: the Kubeflow job it records
STAGE_TAG = "hydra_rlhf.stage"
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
def pipeline_run(tracking: Tracking, job_name: str, *, hand_on: bool) -> Iterator[str]:
    """The parent run for the block's stage to nest under: `tracking.parent_run_id` when given, else
    the cluster's run, else a new one. A new one is the block's to end (FAILED if the block raises)
    unless `hand_on`: in the pipeline the compare step ends it, or the exit step if the job fails."""
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
    if not hand_on:
        run.close()


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
