"""PPO checkpoints that resume exactly: trained weights, optimizer, scheduler, RNG states, step,
and the prompt stream's position. A run killed after a checkpoint and resumed produces the same
later metrics as an uninterrupted run with the same seed."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"
KEEP = 2


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, step: int, trainable: dict, optimizer, scheduler, prompts, history: list) -> Path:
    path = directory / "checkpoints" / f"step-{step:06d}"
    path.mkdir(parents=True, exist_ok=True)
    torch.save({
        "step": step,
        "weights": {name: p.detach().cpu() for name, p in trainable.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "prompts": prompts.state_dict(),
        "rng": _rng_state(),
        "history": history,
    }, path / (STATE_FILE + ".tmp"))
    (path / (STATE_FILE + ".tmp")).replace(path / STATE_FILE)  # a killed save leaves no half file
    for old in sorted((directory / "checkpoints").glob("step-*"))[:-KEEP]:
        shutil.rmtree(old)
    return path


def latest(directory: Path) -> Path | None:
    done = sorted(p for p in (directory / "checkpoints").glob("step-*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def load(path: Path, trainable: dict, optimizer, scheduler, prompts) -> tuple[int, list]:
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    missing = sorted(set(trainable) - set(state["weights"]))
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} trained tensors (e.g. {missing[0]}); "
                         "was it written by another --variant or --lora-rank?")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(state["weights"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    prompts.load_state_dict(state["prompts"])
    _set_rng_state(state["rng"])
    return state["step"], state["history"]
