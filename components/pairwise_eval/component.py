"""Pairwise evaluation: a judge compares the candidate's and the baseline's answers (hydra_core.eval)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pairwise_eval(
    data: Input[Dataset],
    candidate: Input[Model],
    baseline: Input[Model],
    evaluation: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    pipeline_run: Optional[Input[Artifact]] = None,
    judge: Optional[str] = None,
    judge_model: Optional[str] = None,
    judge_base_url: Optional[str] = None,
    max_prompts: int = -1,
    seed: int = -1,
    config: dict = {},
    tracking_uri: str = "",
    experiment: str = "",
    parent_run_id: str = "",
) -> str:
    """Judge `candidate` against `baseline` on the prepared eval prompts, both orders (hydra_core
    EvalConfig; judge gold|reward-model|openai; a parameter left None, an integer -1, keeps the config default,
    `config` sets any other field). The openai judge reads its key from the environment variable
    named by `judge_api_key_env`, set from a Kubernetes secret. The evaluation's metadata is the
    candidate's (its run label as `variant`, its figures) with the judged figures and the `baseline`'s
    name. Its MLflow run nests under `parent_run_id`, else `pipeline_run`'s (an open_pipeline_run output), else
    the data's pipeline run, with the runs of the inputs that have no parent yet. The run records its inputs as
    their MLflow runs' artifacts (`runs:/<run>/data`, `runs:/<run>/model`). Returns the MLflow run id."""
    import shutil
    from pathlib import Path

    from components.metrics import EVAL_KEYS, fill_metrics
    from components.parameters import unless_kept
    from hydra_core import stages
    from hydra_core.config.parameters import from_parameters
    from hydra_core.config.settings import EvalConfig
    from hydra_core.eval.report import FILES, metric_names
    from hydra_core.tracking.mlflow_tracker import recorded_input
    from hydra_core.tracking.runs import PIPELINE_RUN_KEY, Tracking, nest_reused_runs, parent_from

    cfg = from_parameters(EvalConfig, config, candidate=candidate.path, baseline=baseline.path, prompts=data.path,
                          output_dir=evaluation.path, judge=judge, judge_model=judge_model,
                          judge_base_url=judge_base_url, **unless_kept(max_prompts=max_prompts, seed=seed))
    parent = parent_from(parent_run_id, pipeline_run and pipeline_run.metadata, data.metadata)
    names = {"variant": candidate.metadata.get("variant", ""), "baseline": baseline.metadata.get("variant", "")}
    tracking = Tracking(tracking_uri, experiment, parent)
    nest_reused_runs(tracking, data.metadata, candidate.metadata, baseline.metadata)
    sources = {evaluation.path: stages.OWN_OUTPUT["eval"]}
    for given, artifact in ((data, "data"), (candidate, "model"), (baseline, "model")):
        sources.update(recorded_input(given.path, given.metadata, artifact))
    summary = stages.evaluate(cfg, tracking, tags=names, sources=sources)
    shutil.copyfile(Path(evaluation.path) / FILES["report"], report.path)
    evaluation.metadata.update({**candidate.metadata, **names, "mlflow": summary["tracking"], PIPELINE_RUN_KEY: parent,
                                **fill_metrics(metrics, summary, EVAL_KEYS, metric_names)})
    return summary["tracking"]["run_id"]
