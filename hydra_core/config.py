"""Typed configs, one per stage, shared by the CLI, the Kubeflow components and the tests.

Every field becomes a `--flag` on the matching CLI subcommand and a tracked MLflow param, so a
field's name is its public name. Defaults are the embedded default task's recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

DATA_FORMATS = ("arithmetic", "generic", "hh-rlhf", "stack-exchange-paired", "tldr")


@dataclass
class DataConfig:
    """`hydra-rlhf prepare`: load, validate, split and write preference data."""

    output_dir: str = "outputs/data"
    format: Literal["arithmetic", "generic", "hh-rlhf", "stack-exchange-paired", "tldr"] = "arithmetic"
    source: str = ""  # a local .jsonl/.json/.parquet file or a Hugging Face dataset id
    dataset_split: str = "train"  # the split of a hub dataset to read
    dataset_config: str = ""  # the config (subset) name of a hub dataset, if it has several
    demonstrations: str = ""  # optional separate demonstrations (prompt, response) file or id
    eval_fraction: float = 0.05
    max_records: int = 0  # 0 = all
    seed: int = 0
    skip_bad: bool = False  # skip bad records (and report them) instead of stopping at the first
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    # embedded arithmetic task only
    arithmetic_eval_prompts: int = 400
    arithmetic_pairs_per_prompt: int = 2


@dataclass
class ModelInitConfig:
    """`hydra-rlhf init-model`: build a small random-init base model and its tokenizer."""

    output_dir: str = "outputs/base-model"
    preset: Literal["tiny-llama", "llama-30m", "llama-120m"] = "tiny-llama"
    seed: int = 0


@dataclass
class TrainConfig:
    """`hydra-rlhf sft`: SFT, reward-model or Hydra-SFT (both heads on one backbone)."""

    model: str = "outputs/base-model"  # a local directory or a Hugging Face model id
    data: str = "outputs/data"  # a prepared directory
    output_dir: str = "outputs/hydra-sft"
    mode: Literal["sft", "rm", "hydra"] = "hydra"
    steps: int = 1500
    demo_batch_size: int = 128
    pair_batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    reward_loss_weight: float = 1.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    adam_beta2: float = 0.98
    max_length: int = 512
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    # auto = bf16 autocast (fp32 weights) on a bf16 GPU or a CPU with native bf16 maths, else fp32
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    lora_rank: int = 0  # 0 = train the backbone in full
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    eval_every: int = 250
    eval_batch_size: int = 256
    checkpoint_every: int = 500
    log_every: int = 25
    seed: int = 0
    trust_remote_code: bool = False
    greedy_eval_prompts: int = 400  # held-out prompts checked greedily by the task verifier


@dataclass
class ExportConfig:
    """`hydra-rlhf export`: a Hydra directory's policy as a plain HF causal-LM directory."""

    model: str = "outputs/ppo"
    output_dir: str = "outputs/export"
    trust_remote_code: bool = False


PPO_VARIANTS = ("full", "lora", "lora-dynamic", "j-hydra", "hydra")


@dataclass
class PPOConfig:
    """`hydra-rlhf ppo`: PPO with one of the paper's five memory variants."""

    model: str = "outputs/hydra-sft"  # the SFT policy; a Hydra-SFT directory for j-hydra / hydra
    reward_model: str = ""  # the reward model for full / lora / lora-dynamic; default: `model`
    data: str = "outputs/data"  # a prepared directory (its prompts_train split)
    output_dir: str = "outputs/ppo"
    variant: Literal["full", "lora", "lora-dynamic", "j-hydra", "hydra"] = "hydra"
    steps: int = 12  # PPO iterations: rollout, score, optimise
    rollout_batch_size: int = 256  # prompts sampled per iteration
    mini_batch_size: int = 64
    ppo_epochs: int = 4
    learning_rate: float = 1e-3  # actor
    critic_learning_rate: float = 1e-3
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    lora_rank: int = 8
    lora_alpha: int = 16
    kl_coef: float = 0.5
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_ceiling: float = 10.0  # warn when the mean sequence KL passes this
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    value_loss_coef: float = 0.5  # weight of the value loss where actor and critic share weights
    whiten_advantages: bool = True
    missing_eos_penalty: float = 1.0  # subtracted from the score of a response with no EOS
    max_grad_norm: float = 1.0
    max_new_tokens: int = 6
    max_prompt_length: int = 512
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    checkpoint_every: int = 0  # 0 = only at the end
    resume: bool = False  # continue from the newest checkpoint in output_dir
    eval_every: int = 0  # greedy gold accuracy every N iterations where the task has a verifier
    greedy_eval_prompts: int = 400
    seed: int = 0
    device: str = ""  # "" = CUDA when available, else CPU
    trust_remote_code: bool = False


@dataclass
class EvalConfig:
    """`hydra-rlhf eval`: pairwise judging of a candidate policy against a baseline."""

    candidate: str = "outputs/ppo"
    baseline: str = ""  # default: the SFT model the candidate's PPO run started from
    prompts: str = "outputs/data"  # a prepared directory (its prompts_eval split) or a JSONL of prompts
    output_dir: str = "outputs/eval"
    judge: Literal["openai", "reward-model", "gold"] = "gold"
    max_prompts: int = 200
    max_new_tokens: int = 6
    greedy: bool = True
    temperature: float = 1.0
    seed: int = 0
    reward_model: str = ""  # for the reward-model judge; default: the baseline directory
    judge_base_url: str = "https://api.openai.com/v1"
    judge_model: str = "gpt-4o"
    judge_api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key, never the key
    judge_concurrency: int = 4
    judge_timeout: float = 60.0
    judge_max_retries: int = 5
    judge_cache: str = ""  # a judgments cache file; default: <output_dir>/judge_cache.jsonl
    confidence: float = 0.95
    trust_remote_code: bool = False


def config_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _base_type(tp):
    if get_origin(tp) is Literal:
        return type(get_args(tp)[0]), list(get_args(tp))
    if get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _base_type(inner[0])
    return tp, None


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per config field, typed and defaulted from the dataclass."""
    hints = typing.get_type_hints(cls)
    for f in config_fields(cls):
        if f.name in skip:
            continue
        tp, choices = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if tp is bool:
            parser.add_argument(flag, dest=f.name, type=_bool, nargs="?", const=True, default=default,
                                metavar="BOOL", help=f"(default: {default})")
        else:
            parser.add_argument(flag, dest=f.name, type=tp, choices=choices, default=default,
                                help=f"(default: {default})")


def from_args(cls, ns: argparse.Namespace):
    names = {f.name for f in config_fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(json.dumps({"type": type(cfg).__name__, **to_dict(cfg)}, indent=2))


def override(cfg, **changes):
    """A copy of `cfg` with `changes`, refusing names the config does not have."""
    names = {f.name for f in config_fields(type(cfg))}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"{type(cfg).__name__} has no field(s) {unknown}")
    return dataclasses.replace(cfg, **changes)


__all__ = [
    "DATA_FORMATS",
    "DataConfig",
    "EvalConfig",
    "ExportConfig",
    "PPOConfig",
    "PPO_VARIANTS",
    "ModelInitConfig",
    "TrainConfig",
    "add_config_args",
    "config_fields",
    "from_args",
    "override",
    "save_config",
    "to_dict",
]
