"""LoRA adapters on a Hydra backbone (PEFT), by default on every linear layer of every decoder layer.

A fresh adapter is exactly zero (PEFT initialises B = 0), so with it switched off, or on, at step
0 the model is the frozen one. Dynamic LoRA relies on this: the reference policy and the reward
model are the backbone with the adapters switched off.

`lora_target_modules` picks the layers: `all-linear` (every linear layer of every decoder layer, whatever
the architecture: nn.Linear, bitsandbytes' quantised layers, GPT-2's Conv1D; never the output layer), or
module names (`q_proj,v_proj`; a dotted suffix such as `mlp.c_proj` tells apart layers of one name).
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from hydra_core.config.fields import flag
from hydra_core.config.settings import ALL_LINEAR, lora_target_names
from hydra_core.distributed import full_tensor
from hydra_core.models.hydra import HydraModel, decoder_layers, load_hydra

SETTING = flag("lora_target_modules")


def linear_modules(causal_lm: nn.Module) -> dict[str, nn.Module]:
    """The linear layers of the decoder layers by their names in `causal_lm`; a layer that already carries
    adapters stands for the linear layer it wraps (its parts, the base layer and the LoRA matrices, do not)."""
    found: dict[str, nn.Module] = {}
    for prefix, layer in decoder_layers(causal_lm):
        wrapped: list[str] = []
        for name, module in layer.named_modules(prefix=prefix):
            if any(name.startswith(f"{outer}.") for outer in wrapped):
                continue
            if isinstance(module, BaseTunerLayer):
                wrapped.append(name)
            if isinstance(module, (BaseTunerLayer, nn.Linear, Conv1D)):
                found[name] = module
    return found


def leaf_names(names) -> list[str]:
    """The distinct last parts of module names, sorted: q_proj, v_proj, ..."""
    return sorted({name.rsplit(".", 1)[-1] for name in names})


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")  # as PEFT matches a list of names


def lora_targets(causal_lm: nn.Module, spec: str, where: str = "") -> dict[str, nn.Module]:
    """The modules `spec` (a `lora_target_modules` value) puts LoRA on, by name; a ValueError naming the
    setting and listing the model's linear modules when a name matches none. `where` names the model."""
    linear = linear_modules(causal_lm)
    names = lora_target_names(spec)
    if names == [ALL_LINEAR]:
        return linear
    unmatched = [target for target in names if not any(_matches(name, target) for name in linear)]
    if unmatched:
        raise ValueError(f"{SETTING}: {', '.join(map(repr, unmatched))} matches no linear module of the decoder "
                         f"layers of {where or type(causal_lm).__name__}; they have: {', '.join(leaf_names(linear))}")
    return {name: module for name, module in linear.items() if any(_matches(name, target) for target in names)}


def check_lora_targets(path: str, spec: str, trust_remote_code: bool = False) -> None:
    """`lora_targets` on the architecture of the model at `path`, built on the meta device (no weights read),
    so that a name matching nothing is refused before any work."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    lora_targets(model, spec, where=path)


def lora_config(rank: int, alpha: int, dropout: float, targets: dict[str, nn.Module]) -> LoraConfig:
    # Conv1D keeps its weight as (in, out), the transpose of nn.Linear's: PEFT must know, or it warns and guesses
    conv1d = any(isinstance(getattr(m, "base_layer", m), Conv1D) for m in targets.values())
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                      fan_in_fan_out=conv1d, bias="none", task_type="CAUSAL_LM")


def add_lora(model: HydraModel, rank: int, alpha: int, dropout: float = 0.0, name: str = "default",
             target_modules: str = ALL_LINEAR) -> None:
    """Add a LoRA adapter named `name` on the modules `target_modules` names; the backbone's own weights stay
    frozen."""
    config = lora_config(rank, alpha, dropout, lora_targets(model.base_model, target_modules))
    if isinstance(model.backbone, PeftModel):
        model.backbone.add_adapter(name, config)
    else:
        model.backbone = get_peft_model(model.backbone, config, adapter_name=name)


def wrapped_modules(models) -> dict:
    """What the adapters of `models` wrap, for a stage's summary: the distinct leaf names (`lora_modules`)
    and how many modules carry adapters (`lora_wrapped_modules`; a module with two adapters counts once)."""
    names = [name for model in models for name, module in model.base_model.named_modules()
             if isinstance(module, BaseTunerLayer)]
    return {"lora_modules": leaf_names(names), "lora_wrapped_modules": len(names)}


def adapter_weights(model: HydraModel, adapter: str) -> dict[str, torch.Tensor]:
    """The weights of `model`'s adapter `adapter`, whole: sharded (FSDP) ones gathered, so every process of a
    sharded model must ask."""
    return {k: full_tensor(v) for k, v in get_peft_model_state_dict(model.backbone, adapter_name=adapter).items()}


def merged_full_precision(model: HydraModel, adapter: str, path: str, dtype: torch.dtype,
                          trust_remote_code: bool = False, weights: dict[str, torch.Tensor] | None = None
                          ) -> HydraModel:
    """`model`'s policy with `adapter` active, merged into a full-precision copy of its backbone loaded from
    `path` on the CPU: merged into a quantised backbone, the trained weights would be rounded to its 4-bit or
    8-bit grid, and a GPU may have no room for a second, full copy (a sharded backbone has no whole copy at
    all). No heads. `weights`: the adapter's, from `adapter_weights` (default: read from `model` here)."""
    weights = adapter_weights(model, adapter) if weights is None else weights
    plain = load_hydra(path, heads=(), device="cpu", dtype=dtype, trust_remote_code=trust_remote_code).backbone
    adapted = get_peft_model(plain, copy.deepcopy(model.backbone.peft_config[adapter]), adapter_name=adapter)
    set_peft_model_state_dict(adapted, {k: v.cpu() for k, v in weights.items()}, adapter_name=adapter)
    return HydraModel(adapted.merge_and_unload(), model.tokenizer, heads=(), meta=model.meta)
