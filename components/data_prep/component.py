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
    max_records: Optional[int] = None,
    eval_fraction: Optional[float] = None,
    seed: Optional[int] = None,
    config: dict = {},
    tracking_uri: str = "",
    experiment: str = "",
    parent_run_id: str = "",
    pipeline_run_name: str = "",
) -> NamedTuple("DataPrepOutputs", [("parent_run_id", str), ("run_id", str)]):
    """Prepare preference data into a directory of splits (hydra_core DataConfig: a parameter left
    None keeps the config default, `config` sets any other field). Creates the pipeline's MLflow
    parent run unless `parent_run_id` is given; returns it and this step's run id. The data's
    metadata carries the parent run id, so the steps that read the data nest under it."""
    from components.metrics import DATA_KEYS, fill_metrics
    from hydra_core import stages
    from hydra_core.config import DataConfig, from_parameters
    from hydra_core.tracking.runs import PIPELINE_RUN_KEY, Tracking, open_pipeline_run

    cfg = from_parameters(DataConfig, config, output_dir=data.path, source=dataset, format=data_format,
                          dataset_split=dataset_split, max_records=max_records, eval_fraction=eval_fraction, seed=seed)
    tracking = Tracking(tracking_uri, experiment, parent_run_id)
    tracking.parent_run_id = parent_run_id or open_pipeline_run(tracking, pipeline_run_name)
    summary = stages.prepare_data(cfg, tracking)
    data.metadata.update({"mlflow": summary["tracking"], PIPELINE_RUN_KEY: tracking.parent_run_id,
                          **fill_metrics(metrics, summary, DATA_KEYS)})
    return (tracking.parent_run_id, summary["tracking"]["run_id"])
