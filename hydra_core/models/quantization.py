"""A frozen backbone quantised by bitsandbytes under the LoRA adapters, as QLoRA does.

`8bit` is LLM.int8() (int8 weights with per-row scales, outlier features in 16-bit); `4bit` is QLoRA's
NF4 with double quantisation, computing in the frozen weights' dtype. transformers quantises the linear
layers of the decoder and keeps the output layer, the embeddings and the norms as loaded; the Hydra heads
live outside the backbone and are never quantised. bitsandbytes is an optional extra
(`pip install 'hydra-rlhf[quantization]'`); `check_quantization` refuses a run that asks for it where it is
missing or cannot run, in one line, before any work.
"""

from __future__ import annotations

import logging

import torch

from hydra_core.config.fields import flag
from hydra_core.runtime import pick_device

SETTING = flag("quantize_backbone")
EXTRA = "pip install 'hydra-rlhf[quantization]'"


class QuantizationError(ValueError):
    """A quantised backbone that cannot be had on this machine."""


def _drop_cast_notice(record: logging.LogRecord) -> bool:
    return "inputs will be cast" not in record.getMessage()


def _quiet_int8() -> None:
    # LLM.int8() multiplies in fp16 and says so at every forward of every layer: thousands of lines a step
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_drop_cast_notice)


def check_quantization(mode: str, device: torch.device) -> None:
    """Nothing for `mode` "no"; else a QuantizationError unless bitsandbytes imports and quantises and runs a
    small linear layer on `device` as `mode` asks."""
    if mode == "no":
        return
    try:
        import bitsandbytes as bnb
    except ModuleNotFoundError:
        raise QuantizationError(f"{SETTING} {mode}: needs bitsandbytes, an optional extra: {EXTRA}") from None
    except Exception as e:  # noqa: BLE001 - installed but broken here (no binary for this platform, ...)
        raise QuantizationError(f"{SETTING} {mode}: bitsandbytes does not load here ({_first_line(e)})") from None
    try:
        if mode == "8bit":
            _quiet_int8()
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.to(device)(torch.ones(1, 64, device=device))
    except Exception as e:  # noqa: BLE001 - any failure means this machine cannot run it
        raise QuantizationError(f"{SETTING} {mode}: bitsandbytes {bnb.__version__} cannot run {mode} layers on "
                                f"{device} here ({_first_line(e)})") from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def loading_settings(mode: str, dtype: torch.dtype, device) -> dict:
    """The `from_pretrained` arguments that load a backbone quantised per `mode` on `device` ({} for "no");
    4-bit layers compute in `dtype`, the dtype of the weights left unquantised."""
    if mode == "no":
        return {}
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        _quiet_int8()
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=dtype)
    device = torch.device(device) if device is not None else pick_device()
    # On CPU a memory-mapped checkpoint keeps every page that quantising read resident beside the quantised
    # copy, for as long as the unquantised embeddings keep the file mapped: read it into memory instead
    return {"quantization_config": config, "device_map": {"": str(device)}, "disable_mmap": device.type == "cpu"}


def keep_differentiable(backbone: torch.nn.Module) -> None:
    """Keep gradients flowing through a 4-bit backbone's layers on CPU.

    On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer for its inference kernel the first time
    the layer runs in eval mode on an input that needs no gradient, for good: that kernel has no backward, so
    every later pass, training ones included, would drop the gradient through the frozen layer and the LoRA
    weights beneath it would train on a wrong one. RL runs in eval mode (dropout off) and samples first, so
    the repacking is switched off; nothing else reads that flag."""
    for module in backbone.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
