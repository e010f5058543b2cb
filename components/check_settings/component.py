"""Check settings: the pipeline's first step, so a bad parameter fails before any work, however the
run was started (`hydra-rlhf run` and `submit` make the same check before they start it). It also
says whether the run needs the separately trained SFT model and reward model."""

from typing import List, NamedTuple

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def check_settings(
    rules: dict,
    base_model: str,
    base_preset: str,
    dataset: str,
    data_format: str,
    dataset_split: str,
    max_records: int,
    eval_fraction: float,
    seed: int,
    checkpoint_uri: str,
    sft_steps: int,
    sft_learning_rate: float,
    sft_demo_batch_size: int,
    sft_pair_batch_size: int,
    ppo_variants: List[str],
    ppo_steps: int,
    ppo_rollout_batch_size: int,
    ppo_mini_batch_size: int,
    ppo_learning_rate: float,
    ppo_critic_learning_rate: float,
    ppo_kl_coef: float,
    ppo_lora_rank: int,
    ppo_memory_budget: str,
    ppo_rollout_engine: str,
    judge: str,
    judge_model: str,
    judge_base_url: str,
    eval_max_prompts: int,
    data_config: dict,
    sft_config: dict,
    ppo_config: dict,
    ppo_variant_config: dict,
    eval_config: dict,
    sft_num_nodes: int,
    sft_gpus_per_node: int,
    ppo_num_nodes: int,
    ppo_gpus_per_node: int,
) -> NamedTuple("CheckOutputs", [("separate_sft", bool), ("parameters", str)]):
    """Build every stage's config from the pipeline's parameters (each parameter of this component
    but `rules`, which says which stage field each one sets) and check it
    (hydra_core.config.check_parameters); a bad value fails here, naming its parameter. Returns
    `separate_sft`: whether a run label in `ppo_variants` has a layout that starts, as in the paper,
    from a separately trained SFT model and reward model (full, lora, lora-dynamic), and the `parameters` it
    checked, which the pipeline's parent run records, as JSON (a dict output would turn integers into floats)."""
    values = {name: value for name, value in locals().items() if name != "rules"}

    import json

    from hydra_core.config.parameters import check_parameters, uses_separate_models

    check_parameters(values, rules)
    return (any(uses_separate_models(label) for label in ppo_variants), json.dumps(values))
