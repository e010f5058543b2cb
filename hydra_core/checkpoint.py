"""Checkpoints that resume a training run exactly, for SFT and PPO alike.

A checkpoint holds the trained tensors, the optimizer and scheduler, the positions of the batch
streams, the RNG states (each process's, in a data-parallel run), the step, the history of logged rows
and the config of the run that wrote it. A run killed after a checkpoint and resumed produces the same later metrics as an
uninterrupted run with the same settings.

Nothing in a checkpoint is unpickled as arbitrary objects: tensors are in safetensors files, the
optimizer state loads with `torch.load(weights_only=True)`, and the rest is JSON. A checkpoint is
complete only once `state.json`, written last and atomically, lists the SHA-256 of each of its
files; `latest` skips one that is unfinished or damaged and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE = "state.json"  # written last: its presence and checksums mark a complete checkpoint
WEIGHTS = "weights.safetensors"
RNG_TENSORS = "rng.safetensors"
OPTIMIZER = "optimizer.pt"
KEEP = 2  # the newest and the one before, to fall back on if the newest is damaged
DIRECTORY = "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """This process's RNG states as JSON and as tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    state = {"python": [python_version, list(python_state), python_gauss],
             "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state, tensors


def _set_rng_state(state: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _rank_prefix(rank: int) -> str:
    return f"rank{rank}." if rank else ""  # the first process's names are those of a one-process run


def save(directory: str | Path, step: int, trainable: dict[str, torch.Tensor], optimizer, scheduler,
         streams: dict, history: list, config: dict, rng: list | None = None) -> Path:
    """Write checkpoint `step` under `directory/checkpoints/`; keep the newest KEEP. `rng`: every process's
    `rng_state()` in rank order (the main process writes for all of them); default this process's alone."""
    root = Path(directory) / DIRECTORY
    path = root / f"step-{step:06d}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    rng = rng or [rng_state()]
    save_file({name: p.detach().cpu().contiguous() for name, p in trainable.items()}, path / WEIGHTS)
    save_file({_rank_prefix(rank) + k: v.contiguous() for rank, (_, tensors) in enumerate(rng)
               for k, v in tensors.items()}, path / RNG_TENSORS)
    torch.save(optimizer.state_dict(), path / OPTIMIZER)
    files = {name: _sha256(path / name) for name in (WEIGHTS, RNG_TENSORS, OPTIMIZER)}
    state = {"step": step, "scheduler": scheduler.state_dict(),
             "streams": {name: stream.state_dict() for name, stream in streams.items()},
             "rng": rng[0][0], "rng_other_processes": [json_state for json_state, _ in rng[1:]],
             "processes": len(rng), "history": history, "config": config, "files": files}
    tmp = path / (STATE + ".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, path / STATE)  # a save killed before this line leaves no complete checkpoint
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old)
    return path


def _problem(path: Path) -> str:
    """Why checkpoint `path` cannot be used ("" when it is complete and intact)."""
    if not (path / STATE).exists():
        return "unfinished (no state.json)"
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        expected = state["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return "its state.json is damaged"
    for name, digest in expected.items():
        if not (path / name).exists():
            return f"{name} is missing"
        if _sha256(path / name) != digest:
            return f"{name} does not match its checksum (truncated or changed)"
    return ""


def latest(directory: str | Path) -> Path | None:
    """The newest complete, intact checkpoint under `directory`; a damaged newer one is reported."""
    candidates = sorted((Path(directory) / DIRECTORY).glob("step-*"), reverse=True)
    for path in candidates:
        problem = _problem(path)
        if not problem:
            return path
        warnings.warn(f"checkpoint {path} is not usable ({problem}); trying the one before", RuntimeWarning,
                      stacklevel=2)
    return None


def differences(saved: dict, current: dict, may_differ) -> list[str]:
    """The settings that differ between a checkpoint's config and the resuming run's, as 'name: a -> b'."""
    names = sorted((set(saved) | set(current)) - set(may_differ))
    return [f"{n}: {saved.get(n)!r} -> {current.get(n)!r}" for n in names if saved.get(n) != current.get(n)]


def load(path: str | Path, trainable: dict[str, torch.Tensor], optimizer, scheduler, streams: dict, config: dict,
         may_differ=(), rank: int = 0, world: int = 1) -> tuple[int, list]:
    """Restore checkpoint `path` into process `rank` of `world`; returns (step, history).

    The resuming run's `config` must match the one the checkpoint was written with, except the
    fields in `may_differ`, and it must run as many processes: a ValueError names what differs.
    """
    path = Path(path)
    state = json.loads((path / STATE).read_text(encoding="utf-8"))
    written_by = state.get("processes", 1)
    if written_by != world:
        raise ValueError(f"{path} was written by {written_by} data-parallel process(es) and this run has {world}; "
                         f"resume with {written_by} (each process's data and random state are in the checkpoint)")
    changed = differences(state["config"], config, may_differ)
    if changed:
        raise ValueError(f"{path} was written with other settings; resume with the same ones or start a new run "
                         f"in another --output-dir. Differing: {'; '.join(changed)}")
    weights = load_file(path / WEIGHTS)
    missing = sorted(set(trainable) - set(weights))
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} trained tensors (e.g. {missing[0]})")
    with torch.no_grad():
        for name, p in trainable.items():
            if p.shape != weights[name].shape:
                raise ValueError(f"{path}: tensor {name} has shape {tuple(weights[name].shape)} in the checkpoint "
                                 f"and {tuple(p.shape)} in this run")
            p.copy_(weights[name])
    try:
        optimizer_state = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path / OPTIMIZER} holds objects other than tensors and numbers; not loaded, since "
                         f"unpickling them could run code ({str(e).splitlines()[0][:200]})") from None
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state["scheduler"])
    for name, stream in streams.items():
        stream.load_state_dict(state["streams"][name])
    prefix = _rank_prefix(rank)
    tensors = {k[len(prefix):]: v for k, v in load_file(path / RNG_TENSORS).items()
               if k.startswith(prefix) and (prefix or not k.startswith("rank"))}
    _set_rng_state(state["rng_other_processes"][rank - 1] if rank else state["rng"], tensors)
    return state["step"], state["history"]
