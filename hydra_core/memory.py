"""Memory accounting, measured rather than estimated.

On CUDA the peak is `torch.cuda.max_memory_allocated`; on CPU it is the process peak RSS. Beside
the peak we count the exact bytes of parameters (a quantised weight's with its scales), trainable
parameters, gradients and optimizer state, which is what the paper's variants trade against each other.
"""

from __future__ import annotations

import math
import resource
import sys

import torch

from hydra_core.distributed import is_sharded


def peak_rss_bytes() -> int:
    """Peak RSS since the last `reset_peak` (Linux VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def reset_peak(device: torch.device) -> None:
    """Start a new peak: per phase on CUDA; on Linux CPUs by resetting the kernel's peak RSS mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not permitted: the peak stays the process-lifetime one
        pass


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def allocated_bytes(device: torch.device) -> int:
    """What torch's CUDA allocator holds now (0 on CPU, where peaks are RSS and need no starting point)."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def peak_with_engine(device: torch.device, peak: int, resident: int, engine_bytes: int) -> int:
    """A phase's peak with an inference engine in the process (`engine_bytes`, awake during the phase). On CPU the
    process's RSS holds the engine already. On CUDA the engine's memory may sit outside what torch's allocator
    counts (vLLM's sleep-mode pool), so the peak is at least what was allocated when the phase began plus the
    engine's; where the allocator does count it, `peak` is already the larger of the two."""
    return max(peak, resident + engine_bytes) if device.type == "cuda" else peak


def stage_peak_bytes(rows) -> int:
    """The highest `memory/peak_bytes` among a stage's metric rows (0 when none has one)."""
    return max((row["memory/peak_bytes"] for row in rows if row.get("memory/peak_bytes") is not None), default=0)


def _tensor_bytes(t: torch.Tensor) -> int:
    """The bytes this process holds: of a sharded (FSDP) parameter, its own shard."""
    t = t.to_local() if is_sharded(t) else t
    return t.numel() * t.element_size()


def _numel(p: torch.Tensor) -> int:
    """The parameters a weight stands for: a bitsandbytes 4-bit weight packs two a byte, its `quant_state`
    keeps the true shape."""
    state = getattr(p, "quant_state", None)
    return math.prod(state.shape) if state is not None else p.numel()


def _quantisation_state(modules) -> list[torch.Tensor]:
    """The tensors bitsandbytes keeps beside its quantised weights: a 4-bit weight's `quant_state` (block
    scales; under double quantisation a nested state of their own), an 8-bit layer's per-row scales (`SCB`,
    on the weight until the first forward, then on the layer's `state`). Read by attribute: this module
    imports nothing optional."""
    found = {}
    for module in modules:
        for layer in module.modules():
            for holder in [*layer.parameters(recurse=False), getattr(layer, "state", None)]:
                tensors = [*_state_tensors(getattr(holder, "quant_state", None)), getattr(holder, "SCB", None)]
                found.update({id(t): t for t in tensors if torch.is_tensor(t)})
    return list(found.values())


def _state_tensors(state):
    for value in vars(state).values() if state is not None else ():
        if torch.is_tensor(value):
            yield value
        elif type(value) is type(state):  # the nested state of double quantisation
            yield from _state_tensors(value)


def _unique(params):
    seen = {}
    for p in params:
        seen.setdefault(id(p), p)  # tied weights count once
    return seen.values()


def model_memory(modules, optimizers=(), trainable=None) -> dict[str, int]:
    """Exact bytes held by the given modules and optimizers.

    `trainable` names the trained parameters where `requires_grad` does not tell (PEFT switches it
    off on every adapter but the active one).
    """
    modules = list(modules)
    params = list(_unique(p for m in modules for p in m.parameters()))
    trained = {id(p) for p in (trainable if trainable is not None else [p for p in params if p.requires_grad])}
    optimizer_state = sum(
        _tensor_bytes(v)
        for opt in optimizers
        for state in opt.state.values()
        for v in state.values()
        if torch.is_tensor(v)
    )
    return {
        "memory/params": sum(_numel(p) for p in params),
        "memory/trainable_params": sum(p.numel() for p in params if id(p) in trained),
        "memory/param_bytes": sum(map(_tensor_bytes, [*params, *_quantisation_state(modules)])),
        "memory/trainable_param_bytes": sum(_tensor_bytes(p) for p in params if id(p) in trained),
        # every trained parameter holds a gradient of its own size during a step; counted from the
        # parameters because the gradients are freed (set to None) between steps
        "memory/grad_bytes": sum(_tensor_bytes(p) for p in params if id(p) in trained),
        "memory/optimizer_bytes": optimizer_state,
    }
