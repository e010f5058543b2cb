"""Hydra-SFT: one backbone, LM head and reward head trained together (hydra_core.sft); with `mode`, the
paper's separate SFT model or reward model instead."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE
from components.trainjob_settings import PASSTHROUGHS


@dsl.component(base_image=IMAGE, install_kfp_package=False, task_config_passthroughs=PASSTHROUGHS)
def hydra_sft(
    data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    init_model: Optional[Input[Model]] = None,
    base_model: str = "",
    base_preset: Optional[str] = None,
    mode: Optional[str] = None,
    steps: int = -1,
    learning_rate: Optional[float] = None,
    demo_batch_size: int = -1,
    pair_batch_size: int = -1,
    seed: int = -1,
    config: dict = {},
    tracking_uri: str = "",
    experiment: str = "",
    parent_run_id: str = "",
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    workspace: str = "",
    task_config: dsl.TaskConfig = None,
    registered_model: str = "",
    checkpoint_uri: str = "",
) -> str:
    """Train Hydra-SFT on a prepared directory (hydra_core SFTConfig: a parameter left None, an integer -1, keeps
    the config default, `config` sets any other field) from `init_model` when given (e.g. a reward
    model from an SFT model), else from `base_model`, a model directory or hub id, or when that is
    empty from a fresh random-init `base_preset` model. `mode` sft or rm trains a plain SFT model or
    a reward model instead (SFTConfig.mode). The model is logged to MLflow (nested under
    `parent_run_id`, by default the data's pipeline run) and, given `registered_model`, registered;
    its metadata names it (`variant`: hydra-sft, sft or reward-model). The run records its inputs as
    their MLflow runs' artifacts (`runs:/<run>/data`, `runs:/<run>/model`), the base model as given
    (`preset:<name>` for a random-init one), its output as its own `model` artifact. On `num_nodes` nodes
    of `gpus_per_node` GPUs each (0: CPU nodes), more than one of either, it trains in a Kubeflow Trainer
    TrainJob that runs the stage's command under torchrun (components.trainjob), its files shared under
    `workspace` (a PVC mount: the pipeline's dsl.WORKSPACE_PATH_PLACEHOLDER; kfp fills `task_config` with what
    the step mounts), and this step records the job's training in its run as it does its own. Checkpoints go to a
    location of this step's own under `checkpoint_uri`, else under `workspace` (components.checkpoints), where a
    retry of the step resumes them. Returns the MLflow run id."""
    given = dict(locals())
    from components.checkpoints import step_checkpoints
    from components.metrics import SFT_KEYS, fill_metrics
    from components.parameters import unless_kept
    from components.trainjob import stage_trainer
    from hydra_core import stages
    from hydra_core.config.parameters import from_parameters
    from hydra_core.config.settings import SFTConfig
    from hydra_core.tracking.mlflow_tracker import recorded_input
    from hydra_core.tracking.runs import PIPELINE_RUN_KEY, Tracking, parent_from

    start = init_model.path if init_model is not None else base_model
    cfg = from_parameters(SFTConfig, config, model=start or None, data=data.path, output_dir=model.path, mode=mode,
                          learning_rate=learning_rate, checkpoint_uri=checkpoint_uri or None,
                          **unless_kept(steps=steps, demo_batch_size=demo_batch_size, pair_batch_size=pair_batch_size,
                                        seed=seed))
    cfg.checkpoint_uri = step_checkpoints(cfg.checkpoint_uri, workspace, stages.SFT_RUN_NAMES[cfg.mode], given,
                                          outputs=("model", "metrics"))
    train = stage_trainer("sft", num_nodes, gpus_per_node, workspace, task_config)
    cfg.model = stages.base_model(start, base_preset)  # after the settings are checked: it may build one
    sources = {cfg.model: stages.typed_base_model(start, base_preset), model.path: stages.OWN_OUTPUT["sft"],
               **recorded_input(data.path, data.metadata, "data"),
               **recorded_input(init_model and init_model.path, init_model and init_model.metadata, "model")}
    parent = parent_from(parent_run_id, data.metadata)
    summary = stages.sft(cfg, Tracking(tracking_uri, experiment, parent), registered_model, sources, train)
    model.metadata.update({"variant": stages.SFT_RUN_NAMES[cfg.mode], "mlflow": summary["tracking"],
                           PIPELINE_RUN_KEY: parent, **fill_metrics(metrics, summary, SFT_KEYS)})
    return summary["tracking"]["run_id"]
