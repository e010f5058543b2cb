"""Open the pipeline's MLflow parent run: a step of its own, never cached, so the steps the cache may
reuse take nothing that changes from one pipeline run to the next."""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def open_pipeline_run(
    pipeline_run: Output[Artifact],
    parameters: str,
    pipeline_job_name: str,
    pipeline_job_id: str = "",
    kfp_ui_url: str = "",
    images: List[str] = [],
    tracking_uri: str = "",
    experiment: str = "",
) -> NamedTuple("PipelineRun", [("parent_run_id", str)]):
    """Open the MLflow parent run of job `pipeline_job_name` (hydra_core.tracking.runs.open_pipeline_run) with
    the pipeline's `parameters` (JSON: check_settings' output), what ran (package version, git commit, image)
    and the KFP run: its id `pipeline_job_id`, a link to it when `kfp_ui_url` (the KFP UI's address) is given,
    and `images`, those the spec names. Returns the parent run's id; `pipeline_run`'s metadata carries it too,
    for the steps in a loop (kfp 2.17's local runner hands a loop's task the loop item in place of an upstream
    parameter)."""
    import json
    from pathlib import Path

    from hydra_core.tracking.runs import PIPELINE_RUN_KEY, Tracking, kfp_run_tags, open_pipeline_run

    tags = kfp_run_tags(pipeline_job_id, kfp_ui_url, images)
    parent = open_pipeline_run(Tracking(tracking_uri, experiment), pipeline_job_name, json.loads(parameters), tags)
    pipeline_run.metadata[PIPELINE_RUN_KEY] = parent
    Path(pipeline_run.path).write_text(json.dumps({PIPELINE_RUN_KEY: parent, **tags}), encoding="utf-8")
    return (parent,)
