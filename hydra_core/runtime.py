"""Where code runs: device, dtype, CPU threading and seeds, chosen from what is available."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import random
import sys
from pathlib import Path

import numpy as np
import torch


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` ("cpu", "cuda", "cuda:N"), or CUDA when there is one; a ValueError when the
    requested GPU is not there, before anything is loaded onto it."""
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            found = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ValueError(f"device {requested!r}: this machine has {found} (torch {torch.__version__})")
    return device


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """Weights: bf16 on a GPU that supports it, fp32 on CPU (where bf16 maths, if any, comes from
    autocast: see `mixed_precision`)."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision(requested: str, device: torch.device) -> str:
    """Resolve a config's `mixed_precision` ("auto", "bf16" or "no") for `device`.

    auto takes bf16 autocast where the hardware does bf16 maths natively (a bf16 GPU, or a CPU
    with AVX512-BF16/AMX, where the small models' training step runs about a third faster).
    """
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "no"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "no"
    return requested


@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc's malloc from handing every freed tensor's pages back to the kernel.

    By default each large CPU tensor is mmap'ed and unmapped again, so the next step page-faults
    all its memory back in: about a fifth of a small model's CPU training step. Keeping freed
    memory in the heap costs nothing beyond the peak the process already reached.
    """
    if not sys.platform.startswith("linux") or not ctypes.util.find_library("c"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallopt"):  # a libc without glibc's tuning call
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
