"""The Hydra model: one causal-LM backbone with a scalar reward head and a per-token value head.

A Hydra directory is an ordinary Hugging Face model directory (backbone in safetensors plus the
tokenizer) with two extra files: `heads.safetensors` and `hydra_config.json`. Because the root is a
plain HF directory, `AutoModelForCausalLM.from_pretrained(dir)` loads its policy anywhere.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils.checkpoint
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from hydra_core.data.chat import apply_template_setting
from hydra_core.data.encoding import encode_pair_of, pad_right
from hydra_core.data.schema import Prompt
from hydra_core.models.quantization import keep_differentiable, loading_settings
from hydra_core.runtime import default_dtype

HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "hydra_config.json"
HEAD_NAMES = ("reward", "value")


@dataclass
class HydraOutput:
    logits: torch.Tensor | None  # [B, T', V] for the requested positions
    rewards: torch.Tensor | None  # [B] at the last non-pad token
    values: torch.Tensor | None  # [B, T]
    hidden: torch.Tensor  # [B, T, H] final hidden states


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token per row, for left or right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask * positions).argmax(dim=-1)


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left-padded rows must count positions from their first real token, as `generate` does;
    # otherwise scoring a rollout sees other positions than sampling it did.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class HydraModel(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer, heads=HEAD_NAMES, meta: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.meta = dict(meta or {})
        hidden = self.base_model.config.hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, 1) for name in heads})
        for head in self.heads.values():
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)

    # --- structure -----------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The HF causal LM, under any PEFT wrapper (LoRA layers are injected into it in place)."""
        inner = self.backbone
        return inner.get_base_model() if hasattr(inner, "get_base_model") else inner

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # --- forward -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        lm: bool = True,
        lm_select=None,
        reward: bool = False,
        value: bool = False,
    ) -> HydraOutput:
        """One backbone pass; the heads read what the caller asks for.

        `lm_select` indexes the hidden states the LM head reads (rows, positions): PPO needs logits
        for the response only, Hydra-SFT for the demonstration rows only, and with a large
        vocabulary the full logits are the biggest activation of all.
        """
        decoder = self.base_model.get_decoder()
        hidden = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask),
            use_cache=False,
        ).last_hidden_state
        logits = rewards = values = None
        if lm:
            # contiguous: torch's matmul folds a strided 3-d input one way for a weight that requires grad and
            # another for a frozen one, so `full`'s trained actor and its frozen reference copy would differ in
            # the last bits at step 0 (on CPUs with AMX); a contiguous input takes the same kernel for both
            lm_hidden = hidden if lm_select is None else hidden[lm_select].contiguous()
            logits = self.base_model.get_output_embeddings()(lm_hidden)
        if reward:
            last = last_token_index(attention_mask)
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            rewards = self._head("reward", picked)
        if value:
            values = self._head("value", hidden)
        return HydraOutput(logits, rewards, values, hidden)

    def _head(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        # Outside autocast: a bf16 reward cannot tell apart answers whose scores differ in the
        # third significant digit, and the heads cost nothing next to the backbone.
        head = self.heads[name]
        with torch.autocast(hidden.device.type, enabled=False):
            return head(hidden.to(head.weight.dtype)).squeeze(-1)

    def generate(self, **kwargs) -> torch.Tensor:
        """The backbone's Hugging Face `generate` (its active adapters used). A method of this model so that,
        sharded (`shard_across_processes`), FSDP gathers this model's own weights (embeddings, final norm,
        output layer, heads) around the whole of a generation, as it does around `forward`."""
        return self.backbone.generate(**kwargs)

    # --- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path, heads=None, **meta) -> Path:
        """Write the backbone (active LoRA merged), tokenizer, heads and config as one directory.

        `heads` limits the heads written: a PPO policy keeps none, since its merged backbone is
        no longer the one the reward head was trained on.
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        # Written beside the final files and moved over them one by one once all are complete, so a
        # run killed while saving leaves the files it had, never a half-written weights file.
        staging = Path(tempfile.mkdtemp(prefix=".model-writing-", dir=out))
        try:
            backbone = self.backbone
            if hasattr(backbone, "merge_and_unload"):
                backbone = _merged_copy(backbone)
            backbone.save_pretrained(staging, safe_serialization=True)
            self.tokenizer.save_pretrained(staging)
            kept = [name for name in self.heads if heads is None or name in heads]
            tensors = {f"{name}.{k}": v.detach().float().cpu().contiguous()
                       for name in kept for k, v in self.heads[name].state_dict().items()}
            save_file(tensors, staging / HEADS_FILE)
            config = {**self.meta, **meta, "heads": kept}
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
            for written in staging.iterdir():
                os.replace(written, out / written.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return out

    def export_policy(self, path: str | Path) -> Path:
        """A plain HF causal-LM directory (LoRA merged, no heads) that any server can load."""
        out = Path(path)
        backbone = _merged_copy(self.backbone) if hasattr(self.backbone, "merge_and_unload") else self.backbone
        backbone.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        return out


def decoder_layers(causal_lm: nn.Module) -> list[tuple[str, nn.Module]]:
    """The decoder's layers by their names in `causal_lm` (a HF causal LM, LoRA injected or not): its decoder's
    list of `num_hidden_layers` blocks, whatever the architecture names it (Llama's `model.layers`, GPT-2's
    `transformer.h`)."""
    count = causal_lm.config.get_text_config().num_hidden_layers
    decoder = causal_lm.get_decoder()
    prefix = next(name for name, module in causal_lm.named_modules() if module is decoder)
    for name, module in decoder.named_modules(prefix=prefix):
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return [(f"{name}.{i}", layer) for i, layer in enumerate(module)]
    raise ValueError(f"{type(causal_lm).__name__}: its decoder holds no list of its {count} layers")


def checkpoint_decoder_layers(model: HydraModel) -> None:
    """Activation checkpointing of every decoder layer: a forward that records gradients keeps each layer's
    inputs only, and backward recomputes the layer's activations.

    transformers checkpoints a layer only in training mode, and RL keeps every model in eval mode, which is
    what turns dropout off (and whatever else a layer does differently in training: attention dropout, MoE
    jitter, ...); so this checkpoints in either mode. Non-reentrant checkpointing, because it lets gradients
    reach the LoRA weights inside frozen layers whose inputs need none; the recomputation runs under the same
    autocast and RNG state as the forward, so it gives the same numbers. Without gradients (rollouts,
    scoring) a layer runs as it is, KV cache included.
    """
    for _, layer in decoder_layers(model.base_model):
        # a method bound to the layer, so a deep copy of the model (`_merged_copy`) checkpoints its own layers
        layer.forward = types.MethodType(_checkpointed_forward, layer)


def shard_across_processes(model: HydraModel) -> None:
    """Shard `model` over the data-parallel processes with FSDP2 (`fully_shard`; the process group is joined):
    each decoder layer is one unit, gathered for its forward (and backward) and freed after, and the model itself
    the root unit (embeddings, final norm, output layer, heads). Frozen weights and the adapters and heads that
    train share a unit; FSDP averages the trained ones' gradients.

    `fully_shard` replaces every parameter by a DTensor shard: lists of parameters (an optimizer's) must be
    taken after this call, or they hold tensors that no forward reads. Every process must run the same
    forwards, backwards and generation steps, since each gathers a unit's weights from all of them; HF
    `generate` keeps stepping a process whose responses have all ended while another's are still going
    (`synced_gpus`, which transformers turns on for an FSDP-managed model)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for _, layer in decoder_layers(model.base_model):
        fully_shard(layer)
    fully_shard(model)
    register_fsdp_forward_method(model, "generate")  # else generate reads the root's weights still sharded


def _checkpointed_forward(layer: nn.Module, *args, **kwargs):
    forward = functools.partial(type(layer).forward, layer)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def _merged_copy(peft_model: nn.Module) -> nn.Module:
    """Merge the active LoRA weights into a copy, leaving the live (training) model untouched."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


def saved_heads(path: str | Path) -> list[str]:
    """The heads a directory holds trained weights for (none for a plain causal LM)."""
    config = Path(path) / CONFIG_FILE
    return json.loads(config.read_text()).get("heads", []) if config.exists() else []


def require_reward_head(path: str | Path, role: str) -> None:
    # load_hydra would give such a directory a fresh random head: a reward of pure noise.
    if "reward" not in saved_heads(path):
        raise ValueError(f"{path} has no trained reward head (no 'reward' in its {CONFIG_FILE}), so it cannot "
                         f"serve as {role}; use a Hydra-SFT or reward-model directory ('hydra-rlhf sft --mode "
                         "hydra' or '--mode rm')")


def is_hydra_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


def load_tokenizer(path: str, trust_remote_code: bool = False, chat_template: str = ""):
    """A model's tokenizer as every stage uses it: with the `chat_template` setting applied (data.chat), and EOS
    for padding where it has no pad token."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    apply_template_setting(tokenizer, chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # common for Llama/GPT-style tokenizers
    return tokenizer


def load_hydra(
    path: str,
    *,
    heads=HEAD_NAMES,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    chat_template: str = "",
    quantization: str = "no",
) -> HydraModel:
    """Load a Hydra directory, or wrap any causal LM (local path or hub id) with fresh heads.

    A head saved in the directory is restored; a requested head that is not saved starts fresh,
    except that a missing value head starts as a copy of the reward head (the PPO critic's
    initialisation in the paper). `chat_template` is a stage's setting of that name (data.chat); the
    tokenizer keeps what it gives, and a model saved from this one carries it on. `quantization` ("8bit",
    "4bit") loads the backbone's linear layers quantised on `device` (models.quantization); the heads are
    never quantised.
    """
    dtype = dtype or default_dtype(device)
    tokenizer = load_tokenizer(path, trust_remote_code, chat_template)
    backbone = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                    **loading_settings(quantization, dtype, device))
    keep_differentiable(backbone)
    meta = json.loads((Path(path) / CONFIG_FILE).read_text()) if is_hydra_dir(path) else {"base_model": str(path)}
    meta.pop("heads", None)
    model = HydraModel(backbone, tokenizer, heads=heads, meta=meta)
    saved = load_file(Path(path) / HEADS_FILE) if (Path(path) / HEADS_FILE).exists() else {}
    for name, head in model.heads.items():
        source = name if f"{name}.weight" in saved else ("reward" if name == "value" else None)
        if source and f"{source}.weight" in saved:
            head.load_state_dict({"weight": saved[f"{source}.weight"], "bias": saved[f"{source}.bias"]})
    if device is not None:
        model.to(device)
    return model


@torch.no_grad()
def reward_scores(model, pairs: list[tuple[Prompt, str]]) -> list[float]:
    """A Hydra model's reward head's score of each (prompt, response), as one right-padded batch.
    The one place rewards are computed outside training: the reward-model judge compares two
    responses with it (eval.judges), and the served reward model (reward_pyfunc) scores its rows."""
    max_length = getattr(model.base_model.config, "max_position_embeddings", 2048)
    rows = [encode_pair_of(model.tokenizer, prompt, response, max_length)[0] for prompt, response in pairs]
    batch = {"input_ids": pad_right(rows, model.tokenizer.pad_token_id),
             "attention_mask": pad_right([[1] * len(r) for r in rows], 0)}
    out = model(**{k: v.to(model.device) for k, v in batch.items()}, lm=False, reward=True)
    return out.rewards.float().tolist()
