"""Data prep: load, validate and split preference data (hydra_core.data.prepare)."""

from typing import NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def data_prep(
    data: Output[Dataset],
    metrics: Output[Metrics],
    dataset: Optional[str] = None,
    data_format: Optional[str] = None,
    dataset_split: Optional[str] = None,
    max_records: int = -1,
    eval_fraction: Optional[float] = None,
    seed: int = -1,
    tokenizer: Optional[str] = None,
    config: dict = {},
    tracking_uri: str = "",
    experiment: str = "",
    parent_run_id: str = "",
    pipeline_run_name: str = "",
    open_parent_run: bool = True,
) -> NamedTuple("DataPrepOutputs", [("parent_run_id", str), ("run_id", str)]):
    """Prepare preference data into a directory of splits (hydra_core DataConfig: a parameter left
    None, an integer -1, keeps the config default, `config` sets any other field). Given a `tokenizer` (the
    model the stages will train: a directory or hub id), the manifest counts the records the length limits
    cut. Nests its MLflow run under `parent_run_id`, else the run the cluster opened (MLFLOW_RUN_ID), else a parent run it opens (named
    `pipeline_run_name`) and ends; returns that parent and this step's run id. The data's metadata carries
    the parent run id, so the steps that read the data nest under it too. `open_parent_run` False: no parent
    opened, a top-level run unless `parent_run_id` is given (in a DAG with a step of its own for the parent
    run, as this project's pipeline, whose cache may then reuse this step: hydra_core.tracking.runs says how
    its run is nested later)."""
    from contextlib import nullcontext

    from components.metrics import DATA_KEYS, fill_metrics
    from components.parameters import unless_kept
    from hydra_core import stages
    from hydra_core.config.parameters import from_parameters
    from hydra_core.config.settings import DataConfig
    from hydra_core.tracking.runs import PIPELINE_RUN_KEY, Tracking, pipeline_run

    cfg = from_parameters(DataConfig, config, output_dir=data.path, source=dataset, format=data_format,
                          dataset_split=dataset_split, eval_fraction=eval_fraction, tokenizer=tokenizer,
                          **unless_kept(max_records=max_records, seed=seed))
    tracking = Tracking(tracking_uri, experiment, parent_run_id)
    parent = pipeline_run(tracking, pipeline_run_name) if open_parent_run else nullcontext(parent_run_id)
    with parent as tracking.parent_run_id:
        summary = stages.prepare_data(cfg, tracking, sources={data.path: stages.OWN_OUTPUT["data"]})
    data.metadata.update({"mlflow": summary["tracking"], PIPELINE_RUN_KEY: tracking.parent_run_id,
                          **fill_metrics(metrics, summary, DATA_KEYS)})
    return (tracking.parent_run_id, summary["tracking"]["run_id"])
