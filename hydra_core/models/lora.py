"""LoRA adapters on a Hydra backbone (PEFT), on every linear layer of every decoder layer.

A fresh adapter is exactly zero (PEFT initialises B = 0), so with it switched off, or on, at step
0 the model is the frozen one. Dynamic LoRA relies on this: the reference policy and the reward
model are the backbone with the adapters switched off.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model

from hydra_core.models.hydra import HydraModel


def lora_config(rank: int, alpha: int, dropout: float) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")


def add_lora(model: HydraModel, rank: int, alpha: int, dropout: float = 0.0, name: str = "default") -> None:
    """Add a LoRA adapter named `name`; the backbone's own weights stay frozen."""
    config = lora_config(rank, alpha, dropout)
    if isinstance(model.backbone, PeftModel):
        model.backbone.add_adapter(name, config)
    else:
        model.backbone = get_peft_model(model.backbone, config, adapter_name=name)
