"""Hydra-PPO: RL in one of the paper's five memory layouts with one of the algorithms, named by a run
label such as `hydra` (PPO) or `hydra-grpo` (hydra_core.ppo)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE
from components.trainjob_settings import PASSTHROUGHS


@dsl.component(base_image=IMAGE, install_kfp_package=False, task_config_passthroughs=PASSTHROUGHS)
def hydra_ppo(
    data: Input[Dataset],
    sft_model: Input[Model],
    policy: Output[Model],
    metrics: Output[Metrics],
    plain_sft_model: Optional[Input[Model]] = None,
    reward_model: Optional[Input[Model]] = None,
    pipeline_run: Optional[Input[Artifact]] = None,
    variant: str = "hydra",
    variant_config: dict = {},
    steps: int = -1,
    rollout_batch_size: int = -1,
    mini_batch_size: int = -1,
    learning_rate: Optional[float] = None,
    critic_learning_rate: Optional[float] = None,
    kl_coef: Optional[float] = None,
    lora_rank: int = -1,
    memory_budget: Optional[str] = None,
    rollout_engine: Optional[str] = None,
    seed: int = -1,
    config: dict = {},
    tracking_uri: str = "",
    experiment: str = "",
    parent_run_id: str = "",
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    workspace: str = "",
    checkpoint_uri: str = "",
    task_config: dsl.TaskConfig = None,
) -> str:
    """RL from a Hydra-SFT model (`sft_model`) for the run label `variant`: a layout (full, lora,
    lora-dynamic, j-hydra, hydra: PPO) or layout-algorithm (hydra-grpo, lora-rloo, ...). Given
    `plain_sft_model` and `reward_model` (a separately trained SFT model and reward model), the layouts
    that keep the reward model apart from the policy (full, lora, lora-dynamic) start from those, as in
    the paper; hydra and j-hydra always start from `sft_model`. Settings (hydra_core PPOConfig): the
    parameters (None, an integer -1, keeps the config default), then the entries of `variant_config` ({algorithm,
    layout or label: settings}) that apply to the label, then `config`. The policy is logged to MLflow
    as the run's `model` artifact, nested under `parent_run_id`, else `pipeline_run`'s (an open_pipeline_run
    output), else the data's pipeline run, with the runs of the inputs that have no parent yet;
    its metadata carries the label (`variant`), `layout` and `algorithm`. The run records its inputs as their
    MLflow runs' artifacts (`runs:/<run>/data`, `runs:/<run>/model`). On `num_nodes` nodes of `gpus_per_node`
    GPUs each (0: CPU nodes), more than one of either, it trains in a Kubeflow Trainer TrainJob that runs the
    stage's command under torchrun (components.trainjob), its files shared under `workspace` (a PVC mount: the
    pipeline's dsl.WORKSPACE_PATH_PLACEHOLDER; kfp fills `task_config` with what the step mounts), and this
    step records the job's training in its run as it does its own. Checkpoints (`checkpoint_every` in `config`)
    go to a location of this step's own under `checkpoint_uri`, else under `workspace` (components.checkpoints),
    where a retry of the step resumes them. Returns the MLflow run id."""
    given = dict(locals())
    from components.checkpoints import step_checkpoints
    from components.metrics import PPO_KEYS, fill_metrics
    from components.parameters import unless_kept
    from components.trainjob import stage_trainer
    from hydra_core import stages
    from hydra_core.config.parameters import label_config
    from hydra_core.config.settings import PPOConfig, run_label
    from hydra_core.tracking.mlflow_tracker import recorded_input
    from hydra_core.tracking.runs import PIPELINE_RUN_KEY, Tracking, nest_reused_runs, parent_from

    models = stages.ppo_models(variant, sft_model.path, plain_sft_model.path if plain_sft_model else "",
                               reward_model.path if reward_model else "")
    cfg = label_config(PPOConfig, variant, variant_config, config, refused=("model", "reward_model", "data",
                                                                               "output_dir", "seed"),
                       **models, data=data.path, output_dir=policy.path, learning_rate=learning_rate,
                       critic_learning_rate=critic_learning_rate, kl_coef=kl_coef, memory_budget=memory_budget,
                       rollout_engine=rollout_engine, checkpoint_uri=checkpoint_uri or None,
                       **unless_kept(steps=steps, rollout_batch_size=rollout_batch_size,
                                     mini_batch_size=mini_batch_size, lora_rank=lora_rank, seed=seed))
    cfg.checkpoint_uri = step_checkpoints(cfg.checkpoint_uri, workspace, f"ppo-{run_label(cfg.variant, cfg.algorithm)}",
                                          given, outputs=("policy", "metrics"))
    train = stage_trainer("ppo", num_nodes, gpus_per_node, workspace, task_config)
    parent = parent_from(parent_run_id, pipeline_run and pipeline_run.metadata, data.metadata)
    tracking = Tracking(tracking_uri, experiment, parent)
    nest_reused_runs(tracking, data.metadata, sft_model.metadata, plain_sft_model and plain_sft_model.metadata,
                     reward_model and reward_model.metadata)
    sources = {policy.path: stages.OWN_OUTPUT["ppo"]}
    for given, artifact in ((data, "data"), (sft_model, "model"), (plain_sft_model, "model"), (reward_model, "model")):
        sources.update(recorded_input(given and given.path, given and given.metadata, artifact))
    summary = stages.ppo(cfg, tracking, sources, train)
    policy.metadata.update({"variant": run_label(cfg.variant, cfg.algorithm), "layout": cfg.variant,
                            "algorithm": cfg.algorithm, "started_from": models["model"], "mlflow": summary["tracking"],
                            PIPELINE_RUN_KEY: parent, **fill_metrics(metrics, summary, PPO_KEYS)})
    return summary["tracking"]["run_id"]
