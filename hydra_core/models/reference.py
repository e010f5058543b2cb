"""A model reference (`--model`, `--reward-model`, `--candidate`, `--baseline`), resolved before any work.

An existing directory must hold a model: its config, weights and tokenizer, and the error says
which are missing. Anything else is a Hugging Face hub id: one already in the local cache is used
as it is; otherwise the hub is asked once, with a short timeout, so that a mistyped path or an
unreachable hub is one line at the start of a stage instead of tracebacks minutes into it.
"""

from __future__ import annotations

import os
from pathlib import Path

HUB_TIMEOUT_S = 10.0
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


class ModelReferenceError(ValueError):
    pass


def _missing_in(directory: Path) -> list[str]:
    missing = []
    if not (directory / "config.json").exists():
        missing.append("config.json")
    if not any((directory / name).exists() for name in WEIGHTS):
        missing.append(f"weights ({' or '.join(WEIGHTS[::2])})")
    if not any((directory / name).exists() for name in TOKENIZER):
        missing.append(f"tokenizer ({' or '.join(TOKENIZER)})")
    return missing


def _looks_like_a_path(reference: str) -> bool:
    # A hub id is "name" or "owner/name"; anything with more parts or a path's start is a path.
    return reference.startswith(("/", ".", "~")) or reference.count("/") > 1 or os.sep != "/" and os.sep in reference


def _in_hub_cache(reference: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(reference, "config.json"), str)


def _ask_hub(reference: str, setting: str) -> None:
    import requests

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    where = f"{setting} {reference!r}: not a local directory"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelReferenceError(f"{where}, and not in the Hugging Face cache while HF_HUB_OFFLINE is set")
    token = os.environ.get("HF_TOKEN")
    try:
        answer = requests.get(f"{endpoint}/api/models/{reference}", timeout=HUB_TIMEOUT_S,
                              headers={"Authorization": f"Bearer {token}"} if token else {})
    except (requests.ConnectionError, requests.Timeout):
        raise ModelReferenceError(f"{where}, not in the Hugging Face cache, and the hub ({endpoint}) cannot be "
                                  "reached to look it up") from None
    if answer.status_code in (401, 403, 404):
        raise ModelReferenceError(f"{where}, and the hub ({endpoint}) has no model of that name that this machine "
                                  f"may read (HTTP {answer.status_code}; a gated or private model needs HF_TOKEN)")


def check_model(reference: str, setting: str) -> str:
    """`reference` if it names a model that can be loaded, else a ModelReferenceError naming `setting`."""
    if not reference.strip():
        raise ModelReferenceError(f"{setting}: is empty; give a model directory or a hub id")
    path = Path(reference).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelReferenceError(f"{setting} {reference}: is a file; a model is a directory")
        missing = _missing_in(path)
        if missing:
            kind = " (it is a prepared data directory)" if (path / "manifest.json").exists() else ""
            raise ModelReferenceError(f"{setting} {reference}: not a model directory{kind}; missing: "
                                      f"{', '.join(missing)}")
        return reference
    if _looks_like_a_path(reference):
        raise ModelReferenceError(f"{setting} {reference}: no such directory")
    if not _in_hub_cache(reference):
        _ask_hub(reference, setting)
    return reference
