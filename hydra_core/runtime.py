"""Where code runs: device, dtype, CPU threading and seeds, chosen from what is available."""

from __future__ import annotations

import random

import numpy as np
import torch


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 on CPU (CPU bf16 matmuls are slow and imprecise)."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
