"""Hydra-PPO: PPO in one of the paper's five memory variants (hydra_core.ppo)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def hydra_ppo(
    data: Input[Dataset],
    sft_model: Input[Model],
    policy: Output[Model],
    metrics: Output[Metrics],
    variant: Optional[str] = None,
    steps: Optional[int] = None,
    rollout_batch_size: Optional[int] = None,
    mini_batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    critic_learning_rate: Optional[float] = None,
    kl_coef: Optional[float] = None,
    lora_rank: Optional[int] = None,
    seed: Optional[int] = None,
    config: dict = {},
    tracking_uri: str = "",
    experiment: str = "",
    parent_run_id: str = "",
) -> str:
    """PPO from a Hydra-SFT model (hydra_core PPOConfig; variant full|lora|lora-dynamic|j-hydra|hydra;
    a parameter left None keeps the config default, `config` sets any other field). The policy is
    logged to MLflow as the run's `model` artifact, nested under `parent_run_id` (by default the
    data's pipeline run). Returns the MLflow run id."""
    from components.metrics import PPO_KEYS, fill_metrics
    from hydra_core import stages
    from hydra_core.config import PPOConfig, from_parameters
    from hydra_core.tracking.runs import PIPELINE_RUN_KEY, Tracking

    cfg = from_parameters(PPOConfig, config, model=sft_model.path, data=data.path, output_dir=policy.path,
                          variant=variant, steps=steps, rollout_batch_size=rollout_batch_size,
                          mini_batch_size=mini_batch_size, learning_rate=learning_rate,
                          critic_learning_rate=critic_learning_rate, kl_coef=kl_coef, lora_rank=lora_rank, seed=seed)
    parent = parent_run_id or data.metadata.get(PIPELINE_RUN_KEY, "")
    summary = stages.ppo(cfg, Tracking(tracking_uri, experiment, parent))
    policy.metadata.update({"variant": cfg.variant, "mlflow": summary["tracking"], PIPELINE_RUN_KEY: parent,
                            **fill_metrics(metrics, summary, PPO_KEYS)})
    return summary["tracking"]["run_id"]
