"""Close the pipeline's MLflow runs: the exit step, run however the pipeline ended."""

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def close_pipeline_run(
    status: dsl.PipelineTaskFinalStatus,
    pipeline_job_name: str,
    tracking_uri: str = "",
    experiment: str = "",
) -> int:
    """End the MLflow runs of the job `pipeline_job_name` that are still open: the parent run FINISHED
    or FAILED by the job's final state, a stage run that never ended (a killed step) KILLED.
    Returns how many runs it ended."""
    from hydra_core.tracking.runs import Tracking, close_pipeline_run

    return len(close_pipeline_run(Tracking(tracking_uri, experiment), pipeline_job_name, status.state,
                                  status.error_message))
