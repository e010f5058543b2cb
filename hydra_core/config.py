"""Typed configs, one per stage, and the one path by which settings become a config.

Every field is a `--flag` of the stage's command, a key of its config file, a tracked MLflow param
and, for some, a pipeline parameter, so a field's name is its public name. Defaults are the
embedded default task's recipe.

Settings arrive as text (command-line flags, `NAME=VALUE` pipeline arguments) or as values
(JSON or YAML config files, Kubeflow component parameters). `build` turns any mix of them into a
config: each value is coerced to its field's type by `coerce`, then the config is checked by
`validate`. An error is one line that names the setting the way its source does: the flag, the
file and key, or the pipeline parameter.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Literal, Mapping, get_args, get_origin

from hydra_core.distributed import accelerate_fsdp_launch, launched_world

# The choices of the fields below: each list is written here once, and everything else reads it.
DATA_FORMATS = ("arithmetic", "generic", "conversational", "hh-rlhf", "stack-exchange-paired", "tldr")
MODEL_PRESETS = ("tiny-llama", "llama-30m", "llama-120m", "llama-1b", "tiny-gpt-neox", "tiny-qwen2", "tiny-llama3", "tiny-gpt2")
SFT_MODES = ("sft", "rm", "hydra")
PPO_VARIANTS = ("full", "lora", "lora-dynamic", "j-hydra", "hydra")  # memory layouts (the paper's Table 2)
ALGORITHMS = ("ppo", "rloo", "grpo", "remax")  # policy-gradient methods; all but ppo are critic-free
CRITIC_FREE = ("rloo", "grpo", "remax")
ALGORITHM_NAMES = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "remax": "ReMax"}  # as their papers write them
JUDGES = ("openai", "reward-model", "gold")
PRECISIONS = ("auto", "bf16", "no")
NO_CHAT_TEMPLATE = "none"  # a chat_template setting: plain text even where the tokenizer has a template
QUANTIZATIONS = ("no", "8bit", "4bit")  # a frozen backbone's weights: as loaded, or bitsandbytes 8-bit or 4-bit
# The layouts whose every backbone is frozen under LoRA adapters, their reference and reward being a backbone
# with the adapters off (ppo/roles.py; a test checks the two agree): only there can the backbone be quantised
# with the step-0 KL still 0. `full` trains its backbones; `lora` keeps unadapted reference and reward copies.
QUANTIZABLE_VARIANTS = ("lora-dynamic", "j-hydra", "hydra")
ALL_LINEAR = "all-linear"  # LoRA on every linear layer of every decoder layer (the paper's setting)


Namer = Callable[[str], str]  # how an error names a field: "--steps", "recipe.yaml: sft.steps", ...


class ConfigError(ValueError):
    """A setting with a wrong type or value; the message names it as its source does."""


def setting(default, *, ge=None, gt=None, le=None, lt=None):
    """A field with its allowed range (`ge` <= value, `gt` < value, value <= `le`, value < `lt`),
    checked by `validate`."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"bounds": bounds})


_BYTE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'20GiB', '1.5G', '500MB', '123456' -> bytes (K/M/G alone are powers of ten); a ValueError otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _BYTE_UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a positive byte size (try 20GiB, 1500MB or 123456)")
    return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])


def _resume_or_overwrite(cfg, name: Namer):
    if cfg.resume and cfg.overwrite:
        yield "overwrite", f"and {name('resume')} contradict each other: continue the run in output_dir, or start over"


def _chat_template_file(cfg, name: Namer):
    """A `chat_template` setting that names a file: it must be a Jinja template (hydra_core.data.chat)."""
    setting = cfg.chat_template
    if setting in ("", NO_CHAT_TEMPLATE):
        return
    path = Path(setting)
    if not path.is_file():
        yield "chat_template", (f"{setting!r}: no such file (a Jinja chat template file; {NO_CHAT_TEMPLATE} for "
                                "plain text; empty for the tokenizer's own)")
        return
    import jinja2

    try:
        jinja2.Environment().parse(path.read_text(encoding="utf-8"))
    except (jinja2.TemplateSyntaxError, UnicodeDecodeError) as e:
        yield "chat_template", f"{setting}: not a Jinja template ({e})"


def lora_target_names(text: str) -> list[str]:
    """`lora_target_modules` as a list: ["all-linear"], or the module names of a comma-separated list."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _lora_targets(cfg, name: Namer):
    names = lora_target_names(cfg.lora_target_modules)
    if not names:
        yield "lora_target_modules", f"is empty; give {ALL_LINEAR} or module names such as q_proj,v_proj"
    elif ALL_LINEAR in names and len(names) > 1:
        yield "lora_target_modules", f"{ALL_LINEAR} already names every linear module; give it alone or a list of names"


@dataclass
class DataConfig:
    """`hydra-rlhf prepare`: load, validate, split and write preference data."""

    STAGE: ClassVar[str] = "prepare"

    output_dir: str = "outputs/data"
    format: Literal[DATA_FORMATS] = "arithmetic"
    source: str = ""  # a local .jsonl/.json/.parquet file or a Hugging Face dataset id
    dataset_split: str = "train"  # the split of a hub dataset to read
    dataset_config: str = ""  # the config (subset) name of a hub dataset, if it has several
    dataset_data_dir: str = ""  # the folder of a hub dataset's files to read (stack-exchange-paired: data/rl)
    demonstrations: str = ""  # optional separate demonstrations (prompt, response) file or id
    eval_fraction: float = setting(0.05, gt=0, lt=1)
    max_records: int = setting(0, ge=0)  # 0 = all
    seed: int = setting(0, ge=0)
    skip_bad: bool = False  # skip bad records (and report them) instead of stopping at the first
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    # a model (directory or hub id) whose tokenizer counts tokens: the manifest then says how many records the
    # limits below cut (as SFT's max_length and PPO's max_prompt_length would); "" = lengths in characters only
    tokenizer: str = ""
    chat_template: str = ""  # as the stages': "" the tokenizer's own, none for plain text, or a Jinja file
    max_length: int = setting(512, ge=2)  # prompt + response tokens of a training row
    max_prompt_length: int = setting(512, ge=1)  # prompt tokens of a rollout or an eval prompt
    trust_remote_code: bool = False
    # embedded arithmetic task only
    arithmetic_eval_prompts: int = setting(400, ge=1)
    arithmetic_pairs_per_prompt: int = setting(2, ge=1)

    def relations(self, name: Namer):
        if self.format != "arithmetic" and not self.source:
            yield "source", f"is required with {name('format')} {self.format} (a file or a dataset id)"
        yield from _chat_template_file(self, name)


@dataclass
class ModelInitConfig:
    """`hydra-rlhf init-model`: build a small random-init base model and its tokenizer."""

    STAGE: ClassVar[str] = "init-model"

    output_dir: str = "outputs/base-model"
    preset: Literal[MODEL_PRESETS] = "tiny-llama"
    seed: int = setting(0, ge=0)


@dataclass
class SFTConfig:
    """`hydra-rlhf sft`: SFT, reward-model or Hydra-SFT (both heads on one backbone) training."""

    STAGE: ClassVar[str] = "sft"

    model: str = "outputs/base-model"  # a local directory or a Hugging Face model id
    data: str = "outputs/data"  # a prepared directory
    output_dir: str = "outputs/hydra-sft"
    mode: Literal[SFT_MODES] = "hydra"
    steps: int = setting(1500, ge=1)
    demo_batch_size: int = setting(128, ge=1)
    pair_batch_size: int = setting(64, ge=1)
    learning_rate: float = setting(2e-3, gt=0)
    weight_decay: float = setting(0.1, ge=0)
    warmup_steps: int = setting(100, ge=0)
    reward_loss_weight: float = setting(1.0, ge=0)
    max_grad_norm: float = setting(1.0, ge=0)  # 0 = no clipping
    adam_beta2: float = setting(0.98, gt=0, lt=1)
    max_length: int = setting(512, ge=2)
    gradient_accumulation_steps: int = setting(1, ge=1)
    gradient_checkpointing: bool = False
    # auto = bf16 autocast (fp32 weights) on a bf16 GPU or a CPU with native bf16 maths, else fp32
    mixed_precision: Literal[PRECISIONS] = "auto"
    lora_rank: int = setting(0, ge=0)  # 0 = train the backbone in full
    lora_alpha: int = setting(16, ge=1)
    lora_dropout: float = setting(0.0, ge=0, lt=1)
    # all-linear = every linear layer of every decoder layer (the output layer not), or names: q_proj,v_proj
    lora_target_modules: str = ALL_LINEAR
    eval_every: int = setting(250, ge=1)
    eval_batch_size: int = setting(256, ge=1)
    checkpoint_every: int = setting(500, ge=0)  # 0 = no checkpoints
    resume: bool = False  # continue from the newest checkpoint in output_dir
    overwrite: bool = False  # start over in an output_dir that holds an earlier run
    log_every: int = setting(25, ge=1)
    seed: int = setting(0, ge=0)
    trust_remote_code: bool = False
    greedy_eval_prompts: int = setting(400, ge=1)  # held-out prompts checked greedily by the task verifier
    max_new_tokens: int = setting(6, ge=1)  # length of those greedy responses (as PPO and eval generate them)
    # how prompts are rendered: "" the tokenizer's chat template if it has one, none for plain text even where it
    # has one, or a Jinja template file; the saved model's tokenizer carries the choice to PPO and eval
    chat_template: str = ""

    def relations(self, name: Namer):
        yield from _resume_or_overwrite(self, name)
        yield from _chat_template_file(self, name)
        yield from _lora_targets(self, name)


@dataclass
class ExportConfig:
    """`hydra-rlhf export`: a Hydra directory's policy as a plain HF causal-LM directory."""

    STAGE: ClassVar[str] = "export"

    model: str = "outputs/ppo"
    output_dir: str = "outputs/export"
    trust_remote_code: bool = False


@dataclass
class PPOConfig:
    """`hydra-rlhf ppo`: RL from a reward model with one of the paper's five memory variants (layouts) and
    one of four algorithms: PPO (the paper's), or the critic-free RLOO, GRPO and ReMax."""

    STAGE: ClassVar[str] = "ppo"

    model: str = "outputs/hydra-sft"  # the SFT policy; a Hydra-SFT directory for j-hydra / hydra
    reward_model: str = ""  # the reward model for full / lora / lora-dynamic; default: `model`
    data: str = "outputs/data"  # a prepared directory (its prompts_train split)
    output_dir: str = "outputs/ppo"
    variant: Literal[PPO_VARIANTS] = "hydra"  # the memory layout
    algorithm: Literal[ALGORITHMS] = "ppo"  # how advantages are estimated; rloo, grpo and remax need no critic
    steps: int = setting(12, ge=1)  # iterations: rollout, score, optimise
    rollout_batch_size: int = setting(256, ge=1)  # prompts sampled per iteration, over all data-parallel processes
    samples_per_prompt: int = setting(1, ge=1)  # responses sampled per prompt (a group); at least 2 for rloo, grpo
    # responses per optimizer step, over all processes; 0 = the whole rollout (the paper's)
    mini_batch_size: int = setting(64, ge=0)
    ppo_epochs: int = setting(4, ge=1)
    learning_rate: float = setting(1e-3, gt=0)  # actor
    critic_learning_rate: float = setting(1e-3, gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    lora_rank: int = setting(8, ge=1)
    lora_alpha: int = setting(16, ge=1)
    # all-linear = every linear layer of every decoder layer (the output layer not), or names: q_proj,v_proj
    lora_target_modules: str = ALL_LINEAR
    kl_coef: float = setting(0.5, ge=0)
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_ceiling: float = setting(10.0, gt=0)  # warn when the mean sequence KL passes this
    gamma: float = setting(1.0, ge=0, le=1)
    lam: float = setting(0.95, ge=0, le=1)
    clip_range: float = setting(0.2, gt=0)
    clip_range_value: float = setting(0.2, gt=0)
    value_loss_coef: float = setting(0.5, ge=0)  # weight of the value loss where actor and critic share weights
    whiten_advantages: bool = True  # ppo, rloo, remax: advantages whitened over the batch (grpo: within groups)
    # grpo: divide advantages by their group's std (false: only subtract the mean, as Dr. GRPO)
    grpo_scale_rewards: bool = True
    # grpo: the KL folded into the sequence reward (kl_coef then means what it means for every algorithm), or
    # a k3 term of the loss as in DeepSeekMath, which wants a far smaller kl_coef (it used 0.04; here 0.5
    # held the embedded default's gold accuracy at 0.88 where 0.05 reached 0.955)
    grpo_kl: Literal["reward", "loss"] = "reward"
    # the policy loss averaged over every response token of a mini-batch, or per sequence, then over sequences
    loss_normalisation: Literal["token", "sequence"] = "token"
    missing_eos_penalty: float = setting(1.0, ge=0)  # subtracted from the score of a response with no EOS
    max_grad_norm: float = setting(1.0, gt=0)
    max_new_tokens: int = setting(6, ge=1)
    max_prompt_length: int = setting(512, ge=1)
    temperature: float = setting(1.0, gt=0)
    top_k: int = setting(0, ge=0)  # 0 = no top-k cut
    top_p: float = setting(1.0, gt=0, le=1)
    checkpoint_every: int = setting(0, ge=0)  # 0 = only at the end
    resume: bool = False  # continue from the newest checkpoint in output_dir
    overwrite: bool = False  # start over in an output_dir that holds an earlier run
    eval_every: int = setting(0, ge=0)  # greedy gold accuracy every N iterations where the task has a verifier
    greedy_eval_prompts: int = setting(400, ge=1)
    seed: int = setting(0, ge=0)
    device: str = ""  # "" = CUDA when available, else CPU
    # auto = bf16 where the hardware does bf16 maths natively: frozen backbones stored in bf16 (half the bytes
    # every decoding step reads) and bf16 autocast, trained weights, adapters and heads in fp32; else fp32
    mixed_precision: Literal[PRECISIONS] = "auto"
    # with one update per rollout (1 PPO epoch, the whole rollout one mini-batch) the old log-probs (and a
    # shared critic's values) are the first training forward's, not a separate no-grad pass's: same numbers
    reuse_training_forward: bool = True
    # the training forwards (step 3) keep only each decoder layer's input and recompute the rest in backward:
    # less activation memory for one more forward; rollouts and scoring (no gradients) are unchanged
    gradient_checkpointing: bool = False
    # lora-dynamic, j-hydra, hydra: the frozen backbones in bitsandbytes 8-bit or 4-bit (NF4, as QLoRA) under
    # the fp32 adapters, so the reference and the reward are the quantised backbone with the adapters off;
    # heads stay fp32 and the saved policy is merged into a full-precision copy. Needs the quantization extra
    quantize_backbone: Literal[QUANTIZATIONS] = "no"
    # e.g. 20GiB: before training, probe rollout batches and train with the largest whose peak memory fits
    # (CUDA: max_memory_allocated; CPU: the process's peak RSS); rollout_batch_size is where the search starts
    memory_budget: str = ""
    trust_remote_code: bool = False
    chat_template: str = ""  # as SFT's: "" the model's own, none for plain text, or a Jinja template file
    # data-parallel processes only: each model sharded over them by FSDP2 (decoder layers and the rest), for
    # backbones that do not fit one device; the adapters and heads train as without it. No `full`, no quantised
    # backbone, no checkpoints (the end policy is saved)
    shard_backbone: bool = False

    def relations(self, name: Namer):
        yield from _resume_or_overwrite(self, name)
        yield from _chat_template_file(self, name)
        yield from _sharding(self, name, launched_world())
        if self.memory_budget:
            try:
                parse_bytes(self.memory_budget)
            except ValueError as e:
                yield "memory_budget", str(e)
        responses = self.rollout_batch_size * self.samples_per_prompt
        if self.mini_batch_size > responses and not self.memory_budget:  # a budget may pick a larger rollout
            yield "mini_batch_size", (f"{self.mini_batch_size} is more than the {responses} responses of a rollout "
                                      f"({name('rollout_batch_size')} x {name('samples_per_prompt')}); "
                                      "a mini-batch is a part of one rollout")
        if self.algorithm in ("rloo", "grpo") and self.samples_per_prompt < 2:
            yield "samples_per_prompt", (f"{self.algorithm} compares each response with the others to the same "
                                         f"prompt; it needs at least 2 (got {self.samples_per_prompt})")
        if not re.fullmatch(r"|cpu|cuda(:\d+)?", self.device):
            yield "device", f"{self.device!r} is not cpu, cuda or cuda:N ('' picks CUDA when there is one)"
        yield from _data_parallel(self, name, launched_world())
        yield from _lora_targets(self, name)
        if self.quantize_backbone != "no" and self.variant not in QUANTIZABLE_VARIANTS:
            why = ("trains its backbones in full" if self.variant == "full"
                   else "holds unadapted reference and reward copies")
            yield "quantize_backbone", (f"{self.quantize_backbone} needs a layout whose reference and reward are the "
                                        f"frozen backbone with the adapters off ({', '.join(QUANTIZABLE_VARIANTS)}); "
                                        f"{name('variant')} {self.variant} {why}")


def _sharding(cfg: PPOConfig, name: Namer, world: int):
    """What `shard_backbone` supports, refused up front rather than failing inside FSDP."""
    if accelerate_fsdp_launch():  # an accelerate config with distributed_type FSDP: its fsdp_config is not read
        yield "shard_backbone", ("PPO does not read accelerate's fsdp_config (it runs no Accelerator.prepare): "
                                 "launch with configs/accelerate-fsdp.yaml (MULTI_GPU) and give --shard-backbone")
    if not cfg.shard_backbone:
        return
    if world == 1:
        yield "shard_backbone", ("shards over data-parallel processes and this is 1; launch 2 or more (torchrun "
                                 "--nproc_per_node N or accelerate launch --config_file configs/accelerate-fsdp.yaml)")
    if cfg.variant == "full":
        yield "shard_backbone", (f"needs a layout that trains adapters; {name('variant')} full trains whole "
                                 "backbones (use lora, lora-dynamic, j-hydra or hydra)")
    if cfg.quantize_backbone != "no":
        yield "shard_backbone", f"and {name('quantize_backbone')} {cfg.quantize_backbone}: FSDP does not shard " \
                                "bitsandbytes' quantised weights; choose one"
    if cfg.checkpoint_every or cfg.resume:
        field = "checkpoint_every" if cfg.checkpoint_every else "resume"
        yield field, f"is not supported with {name('shard_backbone')}: checkpoints of sharded models are not " \
                     "written (the policy is saved at the end); set it to 0 / false"


def _data_parallel(cfg: PPOConfig, name: Namer, world: int):
    """What N data-parallel processes (WORLD_SIZE, set by torchrun or accelerate launch) need: each takes an
    equal share of a rollout's prompts (a prompt's responses stay in one process) and of each mini-batch."""
    if world == 1:
        return
    launched = f"the {world} data-parallel processes (WORLD_SIZE)"
    if cfg.rollout_batch_size % world:
        yield "rollout_batch_size", f"{cfg.rollout_batch_size} prompts do not split evenly over {launched}"
    responses = cfg.rollout_batch_size * cfg.samples_per_prompt
    if 0 < cfg.mini_batch_size < responses and cfg.mini_batch_size % world:
        yield "mini_batch_size", f"{cfg.mini_batch_size} responses do not split evenly over {launched}"
    if cfg.memory_budget:
        yield "memory_budget", (f"the budget search probes one process, not {launched}; find the batch in one "
                                f"process and pass it as {name('rollout_batch_size')}")
    if re.fullmatch(r"cuda:\d+", cfg.device):
        yield "device", f"{cfg.device} names one GPU, but each of {launched} takes its local rank's: use cuda"


@dataclass
class EvalConfig:
    """`hydra-rlhf eval`: pairwise judging of a candidate policy against a baseline."""

    STAGE: ClassVar[str] = "eval"

    candidate: str = "outputs/ppo"
    baseline: str = ""  # default: the SFT model the candidate's PPO run started from
    prompts: str = "outputs/data"  # a prepared directory (its prompts_eval split) or a JSONL of prompts
    output_dir: str = "outputs/eval"
    judge: Literal[JUDGES] = "gold"
    max_prompts: int = setting(200, ge=1)
    max_new_tokens: int = setting(6, ge=1)
    greedy: bool = True
    temperature: float = setting(1.0, gt=0)
    seed: int = setting(0, ge=0)
    reward_model: str = ""  # for the reward-model judge; default: the baseline directory
    judge_base_url: str = "https://api.openai.com/v1"
    judge_model: str = "gpt-4o"
    judge_api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key, never the key
    judge_concurrency: int = setting(4, ge=1)
    judge_timeout: float = setting(60.0, gt=0)
    judge_max_retries: int = setting(5, ge=0)
    judge_cache: str = ""  # a judgments cache file; default: <output_dir>/judge_cache.jsonl
    confidence: float = setting(0.95, gt=0, lt=1)
    trust_remote_code: bool = False
    chat_template: str = ""  # as SFT's, for the candidate, the baseline and the reward-model judge alike
    max_prompt_length: int = setting(512, ge=1)  # longer prompts are cut from the left, as PPO's rollouts are

    def relations(self, name: Namer):
        if self.judge == "openai" and not self.judge_base_url.startswith(("http://", "https://")):
            yield "judge_base_url", f"{self.judge_base_url!r} is not an http(s) URL"
        yield from _chat_template_file(self, name)


def run_label(variant: str, algorithm: str) -> str:
    """How a variant/algorithm pair is named in pipelines, runs and tables: `hydra` (PPO), `hydra-grpo`."""
    return variant if algorithm == "ppo" else f"{variant}-{algorithm}"


RUN_LABELS = tuple(run_label(v, a) for a in ALGORITHMS for v in PPO_VARIANTS)


def parse_run_label(label: str) -> dict[str, str]:
    """The `variant` and `algorithm` settings a run label names ("hydra-grpo", "lora", "hydra-ppo");
    a ValueError listing the labels for any other text."""
    for algorithm in ALGORITHMS:
        for variant in PPO_VARIANTS:
            if label in (run_label(variant, algorithm), f"{variant}-{algorithm}"):
                return {"variant": variant, "algorithm": algorithm}
    raise ValueError(f"{label!r} is not a variant or variant-algorithm pair (e.g. hydra, hydra-grpo, lora-rloo); "
                     f"variants: {', '.join(PPO_VARIANTS)}; algorithms: {', '.join(ALGORITHMS)}")


# stage command -> its config; a recipe file has one section per stage, under these names
STAGE_CONFIGS = {cls.STAGE: cls for cls in (DataConfig, ModelInitConfig, SFTConfig, PPOConfig, EvalConfig,
                                            ExportConfig)}


@dataclass
class Placement:
    """Where a pipeline's training step (SFT, PPO) runs: on `num_nodes` nodes of `gpus_per_node` GPUs each (0: CPU
    nodes). One node with at most one GPU is the step's own pod; more of either is a Kubeflow Trainer job that
    runs the stage's command under torchrun (components/trainjob.py). Not a stage: its command has no flags for
    these, torchrun and accelerate say how many processes there are."""

    num_nodes: int = setting(1, ge=1)
    gpus_per_node: int = setting(1, ge=0)

    @property
    def distributed(self) -> bool:
        return self.num_nodes > 1 or self.gpus_per_node > 1


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def field_type(cls, name: str):
    """The field's type, and its choices when it is a Literal (else None)."""
    hint = typing.get_type_hints(cls)[name]
    if get_origin(hint) is Literal:
        return str, list(get_args(hint))
    return hint, None


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# --- coercion: text or value -> a field's type ------------------------------------------------

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_text(text: str, tp) -> Any:
    """A setting written as text (a flag, a NAME=VALUE argument, a YAML string) as a `tp`.

    Lists are JSON or comma-separated, dicts JSON. Raises ValueError saying what was expected.
    """
    if tp is bool:
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(text.strip())
        except ValueError:
            raise ValueError(f"expected {'an integer' if tp is int else 'a number'}, got {text!r}") from None
    if tp in (list, dict):
        if tp is list and not text.lstrip().startswith("["):
            return [item.strip() for item in text.split(",") if item.strip()]
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, tp):
            raise ValueError(f"expected a JSON {'list' if tp is list else 'object'}, got {text!r}")
        return value
    return text


def coerce_value(value: Any, tp, choices: list | None = None) -> Any:
    """`value` as a `tp` (a whole float passes for an int: JSON and Kubeflow send numbers as floats;
    text is parsed, since YAML reads `5e-4` as a string). Raises ValueError saying what was expected."""
    if isinstance(value, str) and tp is not str:
        value = parse_text(value, tp)
    elif tp is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    elif tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp in (int, float) and isinstance(value, bool)):
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, tp.__name__)
        raise ValueError(f"expected {expected}, got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, choices))}")
    return value


def coerce(cls, name: str, value: Any, namer: Namer) -> Any:
    """`value` for field `name` of `cls`; a ConfigError naming it by `namer` if it does not fit."""
    if name not in field_names(cls):
        near = difflib.get_close_matches(name, field_names(cls), n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"its settings: {', '.join(field_names(cls))}"
        raise ConfigError(f"{namer(name)}: 'hydra-rlhf {cls.STAGE}' has no such setting; {hint}")
    tp, choices = field_type(cls, name)
    try:
        return coerce_value(value, tp, choices)
    except ValueError as e:
        raise ConfigError(f"{namer(name)}: {e}") from None


def build(cls, *layers: tuple[Mapping[str, Any], Namer], unset: Namer | None = None):
    """A `cls` config from layers of settings, each `(values, namer)`; a later layer wins.

    Each value is coerced as its layer names it; the whole config is then validated, an error
    naming a field as the layer that set it does, and a field left at its default by `unset`.
    """
    values: dict[str, Any] = {}
    namers: dict[str, Namer] = {}
    for given, namer in layers:
        for name, value in given.items():
            values[name] = coerce(cls, name, value, namer)
            namers[name] = namer
    cfg = cls(**values)
    unset = unset or (lambda name: f"{cls.__name__}.{name}")
    validate(cfg, lambda name: namers.get(name, unset)(name))
    return cfg


def from_parameters(cls, overrides: Mapping[str, Any] | None = None, **parameters):
    """A config from a Kubeflow component's parameters (None keeps a field's default) and its
    `config` dict of any other fields; a field given both ways is an error."""
    given = {k: v for k, v in parameters.items() if v is not None}
    overrides = dict(overrides or {})
    twice = sorted(set(given) & set(overrides))
    if twice:
        raise ConfigError(f"{', '.join(twice)}: given both as a component parameter and in its `config`")
    return build(cls, (given, lambda n: f"parameter {n}"), (overrides, lambda n: f"config[{n!r}]"),
                 unset=lambda n: f"config[{n!r}]")


_BOUNDS = {"ge": (lambda v, b: v >= b, "at least"), "gt": (lambda v, b: v > b, "more than"),
           "le": (lambda v, b: v <= b, "at most"), "lt": (lambda v, b: v < b, "less than")}


def bounds(cls, name: str) -> dict:
    """The range `setting` declared for field `name` ({} when it has none)."""
    return next(f.metadata.get("bounds", {}) for f in dataclasses.fields(cls) if f.name == name)


def describe_range(cls, name: str) -> str:
    """Field `name`'s range in words ("at least 1 and at most 4"; "" when it has none)."""
    return " and ".join(f"{_BOUNDS[kind][1]} {limit:g}" for kind, limit in bounds(cls, name).items())


def validate(cfg, namer: Namer) -> None:
    """Every field's choices and range, then the relations between fields (a config's `relations`);
    the first problem is a ConfigError naming the field by `namer`."""
    cls = type(cfg)
    for name in field_names(cls):
        value = getattr(cfg, name)
        _, choices = field_type(cls, name)
        if choices is not None and value not in choices:  # a config built directly, not through coerce
            raise ConfigError(f"{namer(name)}: {value!r} is not one of {', '.join(choices)}")
        allowed = bounds(cls, name)
        if allowed and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ConfigError(f"{namer(name)}: {value!r} is not a finite number")
        for kind, limit in allowed.items():
            if not _BOUNDS[kind][0](value, limit):
                raise ConfigError(f"{namer(name)}: {value:g} is out of range; it must be {describe_range(cls, name)}")
    for name, problem in getattr(cfg, "relations", lambda _: ())(namer):
        raise ConfigError(f"{namer(name)}: {problem}")


# --- a pipeline's parameters ---------------------------------------------------------------------

# The layouts that, in the paper's experiment, start from a separately trained SFT model and reward model:
# they hold the reward model apart from the policy (ppo/roles.py; a test checks the two agree). j-hydra
# and hydra start from Hydra-SFT, whose one backbone is policy, reference and reward model at once.
SEPARATE_MODEL_VARIANTS = ("full", "lora", "lora-dynamic")
# what a run label sets; a per-label settings table may set any other field of the stage but the wired ones
LABEL_FIELDS = ("variant", "algorithm")


def uses_separate_models(label: str) -> bool:
    """Whether the run label's layout starts from a separate SFT model and reward model (see above)."""
    return parse_run_label(label)["variant"] in SEPARATE_MODEL_VARIANTS


def _table_key(key: str) -> tuple[int, str]:
    """A per-label settings table's key: its rank (an algorithm's entry 0, a layout's 1, a label's 2: the
    most specific wins) and its normal form; ValueError for anything else."""
    if key in ALGORITHMS:
        return 0, key
    if key in PPO_VARIANTS:
        return 1, key
    parsed = parse_run_label(key)  # raises for text that is not a label
    return 2, run_label(parsed["variant"], parsed["algorithm"])


def check_label_table(cls, table: Any, name: str, refused: Iterable[str] = ()) -> None:
    """A per-label settings table: {key: {field: value}}, a key being an algorithm (`grpo`: every layout),
    a layout (`full`: every algorithm on it) or a run label (`lora-grpo`); the values coerced to `cls`'s
    fields. `name` is how an error names the table; `refused` are fields it may not set."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{name}: expected an object of run labels, got {table!r}")
    refused = {*LABEL_FIELDS, *refused}
    for key, settings in table.items():
        try:
            _table_key(key)
        except ValueError:
            raise ConfigError(f"{name}: {key!r} is not an algorithm ({', '.join(ALGORITHMS)}), a layout "
                              f"({', '.join(PPO_VARIANTS)}) or a run label such as hydra-grpo") from None
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{name}[{key!r}]: expected an object of {cls.STAGE} settings, got {settings!r}")
        for field, value in settings.items():
            if field in refused:
                why = "the run label sets it" if field in LABEL_FIELDS else "the pipeline sets it"
                raise ConfigError(f"{name}[{key!r}][{field!r}]: a label's settings cannot hold it; {why}")
            coerce(cls, field, value, lambda f: f"{name}[{key!r}][{f!r}]")


def label_layers(label: str, table: Mapping[str, Mapping], label_name: str, table_name: str) -> list:
    """The `build` layers a run label gives a config: its variant and algorithm, then the entries of
    the per-label settings `table` that apply to it, its algorithm's, then its layout's, then its own
    (the most specific wins). Errors name the label by `label_name`, an entry by `table_name`."""
    try:
        parsed = parse_run_label(label)
    except ValueError as e:
        raise ConfigError(f"{label_name}: {e}") from None
    own = run_label(parsed["variant"], parsed["algorithm"])
    applies = {0: parsed["algorithm"], 1: parsed["variant"], 2: own}
    entries = sorted((rank, key) for key in table for rank, normal in [_table_key(key)] if applies[rank] == normal)
    return [(parsed, lambda _: label_name)] + [
        (table[key], lambda f, key=key: f"{table_name}[{key!r}][{f!r}]") for _, key in entries]


def label_config(cls, label: str, table: Mapping[str, Mapping] | None = None,
                 overrides: Mapping[str, Any] | None = None, refused: Iterable[str] = (), **parameters):
    """`from_parameters` for a run label (a Kubeflow component's `variant` parameter): its parameters
    (None keeps a field's default), then the label's layers (`label_layers`: the entries of `table`,
    the component's per-label settings, that apply to it; they may not set the `refused` fields), then
    its `config` dict of other fields."""
    table = dict(table or {})
    check_label_table(cls, table, "parameter variant_config", refused)
    given = {k: v for k, v in parameters.items() if v is not None}
    overrides = dict(overrides or {})
    twice = sorted(set(given) & set(overrides))
    if twice:
        raise ConfigError(f"{', '.join(twice)}: given both as a component parameter and in its `config`")
    for field in set(overrides) & set(LABEL_FIELDS):
        raise ConfigError(f"config[{field!r}]: the run label (parameter variant, e.g. hydra-grpo) sets it")
    return build(cls, (given, lambda n: f"parameter {n}"),
                 *label_layers(label, table, f"parameter variant {label!r}", "parameter variant_config"),
                 (overrides, lambda n: f"config[{n!r}]"), unset=lambda n: f"config[{n!r}]")


def check_parameters(values: Mapping[str, Any], rules: Mapping[str, Any]) -> None:
    """Build every stage's config from a pipeline's parameter `values` as the pipeline assembles
    them, and check it; an error names the parameter that set the bad value.

    `rules` says how (plain JSON, so a pipeline step can receive it): `fields` maps a parameter to
    the (stage, field) it sets, `configs` a `*_config` parameter to its stage, `wired` each stage's
    fields the pipeline sets itself, `seeded` the stages the `seed` parameter seeds, `labels` a
    list parameter of run labels (`hydra`, `hydra-grpo`; it sets the stage's variant and algorithm)
    to the per-label settings table that goes with it (`check_label_table`), and `placements` each
    training stage's `Placement` fields to the parameters that set them. A stage's config is
    built from its own parameters, then a label's table entries, then its `*_config` parameter.
    """
    fields = {name: tuple(target) for name, target in rules["fields"].items()}
    configs, wired, seeded = rules["configs"], rules["wired"], rules["seeded"]
    labels = dict(rules.get("labels", {}))

    def named(parameter: str) -> Namer:
        return lambda _: f"pipeline parameter {parameter}"

    for name, stage in configs.items():
        for field in values[name]:
            if field in wired[stage]:
                raise ConfigError(f"pipeline parameter {name}: {field!r} is set by the pipeline itself")
            own = "seed" if field == "seed" and stage in seeded else next(
                (p for p, target in fields.items() if target == (stage, field)), None)
            label = next((p for p in labels if fields[p][0] == stage), None) if field in LABEL_FIELDS else None
            if label:
                raise ConfigError(f"pipeline parameter {name}: set {field!r} with the pipeline parameter {label}, "
                                  "whose run labels name a variant and an algorithm (hydra, hydra-grpo, lora-rloo)")
            if own:
                raise ConfigError(f"pipeline parameter {name}: set {field!r} with the pipeline parameter {own}")
    for name, table in labels.items():
        stage = fields[name][0]
        check_label_table(STAGE_CONFIGS[stage], values[table], f"pipeline parameter {table}",
                          refused=[*wired[stage], *(["seed"] if stage in seeded else [])])
    for config_name, stage in configs.items():
        owners = {field: n for n, (target, field) in fields.items() if target == stage}

        def unset(field: str, config_name=config_name, owners=owners) -> str:  # a field left at its default
            return f"pipeline parameter {owners[field] if field in owners else f'{config_name}[{field!r}]'}"

        layers = [({"seed": values["seed"]}, named("seed"))] if stage in seeded else []
        builds: list[tuple[str, list]] = [("", [])]  # one config, or one per item of a list parameter
        for field, name in owners.items():
            value = values[name]
            if name == "base_model" and not value:  # "": a fresh random-init base_preset model
                continue
            if isinstance(value, list):
                if not value:
                    raise ConfigError(f"pipeline parameter {name}: the list is empty")
                if name in labels:  # run labels: each sets the variant and algorithm, and has its table entries
                    builds = [(f" (for the {name} item {item!r})", label_layers(
                        item, values[labels[name]], f"pipeline parameter {name}", f"pipeline parameter {labels[name]}"))
                        for item in value]
                else:
                    builds = [("", [({field: item}, named(name))]) for item in value]
            else:
                layers.append(({field: value}, named(name)))
        overrides = (values[config_name], lambda f, c=config_name: f"pipeline parameter {c}[{f!r}]")
        for item, extra in builds:
            try:
                build(STAGE_CONFIGS[stage], *layers, *extra, overrides, unset=unset)
            except ConfigError as e:
                raise ConfigError(f"{e}{item}") from None
    for name, (stage, field) in fields.items():
        if stage not in configs.values():  # a stage whose config the pipeline builds from this one parameter
            coerce(STAGE_CONFIGS[stage], field, values[name], named(name))
    for parameters in rules.get("placements", {}).values():  # {field: parameter} of each training step
        build(Placement, *(({field: values[name]}, named(name)) for field, name in parameters.items()))


# --- config files ------------------------------------------------------------------------------


def config_file_name(cls) -> str:
    """Where a stage writes the config it ran with, in its output directory."""
    return f"{cls.STAGE.replace('-', '_')}_config.json"


def save_config(cfg, directory: str | Path) -> Path:
    """Write `cfg` as `<stage>_config.json`; `hydra-rlhf <stage> --config` reads it back."""
    path = Path(directory) / config_file_name(type(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": type(cfg).__name__, **to_dict(cfg)}, indent=2) + "\n", encoding="utf-8")
    return path


def read_config_file(path: str | Path) -> dict:
    """A JSON or YAML config file as a dict; a ConfigError naming the file if it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {'is a directory, not a' if path.is_dir() else 'no such'} config file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:line {e.lineno}: malformed JSON ({e.msg})") from None
    except Exception as e:  # noqa: BLE001 - yaml's errors; their first line names the line
        raise ConfigError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    if is_recipe(data):
        for section, settings in data.items():
            if not isinstance(settings, dict | None):
                raise ConfigError(f"{path}: section '{section}' must be a mapping of settings, "
                                  f"got {type(settings).__name__}")
        _check_recipe_notes(data, path)
    return data


# A recipe's sections that are no stage's settings: `hub` lists the hub ids the recipe downloads ({models: [...],
# datasets: [...]}); `stand_in` says what stands in for them on a machine without the hub or a GPU (`hydra-rlhf run
# --stand-in`): `preset`, a random-init model of the same architecture, and `dataset`, a file of a few records in
# the recipe's format, its path relative to the recipe's folder (the embedded default's arithmetic task needs none).
RECIPE_NOTES = {"hub": {"models": list, "datasets": list}, "stand_in": {"preset": str, "dataset": str}}


def _check_recipe_notes(data: Mapping, path) -> None:
    for section, fields in RECIPE_NOTES.items():
        for key, value in (data.get(section) or {}).items():
            if key not in fields:
                raise ConfigError(f"{path}: {section}.{key}: not a key of '{section}' (its keys: {', '.join(fields)})")
            wrong = not isinstance(value, fields[key]) or (fields[key] is list and
                                                           not all(isinstance(v, str) for v in value))
            if wrong:
                kind = "a list of hub ids" if fields[key] is list else "a string"
                raise ConfigError(f"{path}: {section}.{key}: expected {kind}, got {value!r}")
    preset = (data.get("stand_in") or {}).get("preset")
    if preset is not None and preset not in MODEL_PRESETS:
        raise ConfigError(f"{path}: stand_in.preset: {preset!r} is not one of {', '.join(MODEL_PRESETS)}")


def is_recipe(data: Mapping) -> bool:
    """A recipe has one section per stage (and `pipeline`, `hub`, `stand_in`); a stage's config file is flat."""
    return bool(data) and set(data) <= {*STAGE_CONFIGS, "pipeline", *RECIPE_NOTES}


def stage_settings(cls, data: Mapping, path: str | Path) -> dict:
    """The settings for `cls` in a config file's `data`: a saved `<stage>_config.json`, a flat
    mapping of fields, or a recipe's section for the stage."""
    if is_recipe(data):
        if cls.STAGE not in data:
            raise ConfigError(f"{path}: the recipe has no '{cls.STAGE}' section (it has: {', '.join(data)})")
        return dict(data[cls.STAGE] or {})
    data = dict(data)
    kind = data.pop("type", cls.__name__)
    if kind != cls.__name__:
        raise ConfigError(f"{path}: holds a {kind}, not the {cls.__name__} of 'hydra-rlhf {cls.STAGE}'")
    return data


def file_namer(path: str | Path, section: str = "") -> Namer:
    where = f"{path}: {section}." if section else f"{path}: "
    return lambda name: f"{where}{name}"


def load_config(cls, path: str | Path, overrides: Iterable[tuple[Mapping[str, Any], Namer]] = (),
                unset: Namer | None = None):
    """The `cls` config of file `path`, with later layers (e.g. command-line flags) on top."""
    data = read_config_file(path)
    section = cls.STAGE if is_recipe(data) else ""
    return build(cls, (stage_settings(cls, data, path), file_namer(path, section)), *overrides, unset=unset)


__all__ = [
    "ALGORITHM_NAMES", "ALGORITHMS", "ALL_LINEAR", "CRITIC_FREE", "DATA_FORMATS", "JUDGES", "LABEL_FIELDS",
    "MODEL_PRESETS", "NO_CHAT_TEMPLATE", "PPO_VARIANTS", "PRECISIONS", "QUANTIZABLE_VARIANTS", "QUANTIZATIONS",
    "RUN_LABELS", "SEPARATE_MODEL_VARIANTS", "SFT_MODES", "STAGE_CONFIGS",
    "ConfigError", "DataConfig", "EvalConfig", "ExportConfig", "ModelInitConfig", "PPOConfig", "Placement",
    "SFTConfig",
    "bounds", "build", "check_label_table", "check_parameters", "coerce", "coerce_value", "config_file_name",
    "describe_range", "field_names", "field_type", "file_namer", "flag", "from_parameters", "is_recipe",
    "label_config", "label_layers", "load_config", "lora_target_names", "parse_run_label", "parse_text",
    "read_config_file", "run_label",
    "save_config", "setting", "stage_settings", "to_dict", "uses_separate_models", "validate",
]
