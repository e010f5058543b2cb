"""Checkpoints that resume a training run exactly, for SFT and PPO alike.

A checkpoint holds the trained tensors, the optimizer and scheduler, the positions of the batch
streams, the RNG states (each process's, in a data-parallel run), the step, the history of logged rows
and the config of the run that wrote it. A run killed after a checkpoint and resumed produces the same later metrics as an
uninterrupted run with the same settings.

Nothing in a checkpoint is unpickled as arbitrary objects: tensors are in safetensors files, the
optimizer state loads with `torch.load(weights_only=True)`, and the rest is JSON. A checkpoint is
complete only once `state.json`, written last and atomically, lists the SHA-256 of each of its
files; `latest` skips one that is unfinished or damaged and says so.

In a sharded run (`--shard-backbone`: trained tensors that are DTensors) every process writes its own shard
of the trained tensors and of the optimizer state with torch.distributed.checkpoint into `dcp/`, and reads
it back in place on resume; the main process writes the rest, and `state.json` lists every file of `dcp/`
with its checksum. The checkpoint's index (`dcp/.metadata`, a pickle) is read by an unpickler that builds
only torch.distributed.checkpoint's own metadata records.
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
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file

from hydra_core.distributed import is_sharded

STATE = "state.json"  # written last: its presence and checksums mark a complete checkpoint
WEIGHTS = "weights.safetensors"
RNG_TENSORS = "rng.safetensors"
OPTIMIZER = "optimizer.pt"
SHARDS = "dcp"  # a sharded run's trained tensors and optimizer state: a torch.distributed.checkpoint folder
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
    `rng_state()` in rank order (the main process writes for all of them); default this process's alone.
    With sharded trained tensors every process must call it (each writes its shards), `rng` given on the main one."""
    root = Path(directory) / DIRECTORY
    path = root / f"step-{step:06d}"
    sharded = any(is_sharded(p) for p in trainable.values())
    if sharded and dist.get_rank():  # its shards alone: the main process writes everything else
        _save_shards(path, trainable, optimizer)
        return path
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    rng = rng or [rng_state()]
    if sharded:
        groups = _save_shards(path, trainable, optimizer)
        written = [f"{SHARDS}/{f.name}" for f in sorted((path / SHARDS).iterdir())]
    else:
        save_file({name: p.detach().cpu().contiguous() for name, p in trainable.items()}, path / WEIGHTS)
        torch.save(optimizer.state_dict(), path / OPTIMIZER)
        written = [WEIGHTS, OPTIMIZER]
    save_file({_rank_prefix(rank) + k: v.contiguous() for rank, (_, tensors) in enumerate(rng)
               for k, v in tensors.items()}, path / RNG_TENSORS)
    files = {name: _sha256(path / name) for name in (*written, RNG_TENSORS)}
    state = {"step": step, "scheduler": scheduler.state_dict(),
             "streams": {name: stream.state_dict() for name, stream in streams.items()},
             "rng": rng[0][0], "rng_other_processes": [json_state for json_state, _ in rng[1:]],
             "processes": len(rng), "history": history, "config": config, "files": files}
    if sharded:
        state[SHARDS] = {"param_groups": groups}
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
    A sharded run's checkpoint is read by every process at once, each its own shards.
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
    if SHARDS in state:
        _load_shards(path, state[SHARDS]["param_groups"], trainable, optimizer)
    else:
        weights = load_file(path / WEIGHTS)
        _check_tensors(path, trainable, {name: w.shape for name, w in weights.items()})
        with torch.no_grad():
            for name, p in trainable.items():
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


def _check_tensors(path: Path, trainable: dict[str, torch.Tensor], saved: dict[str, tuple]) -> None:
    """Refuse checkpoint `path` unless it holds every trained tensor at this run's shape (`saved`: shapes by name)."""
    missing = sorted(set(trainable) - set(saved))
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} trained tensors (e.g. {missing[0]})")
    for name, p in trainable.items():
        if tuple(p.shape) != tuple(saved[name]):
            raise ValueError(f"{path}: tensor {name} has shape {tuple(saved[name])} in the checkpoint "
                             f"and {tuple(p.shape)} in this run")


# The optimizer's state goes to DCP keyed by the trained tensors' names, as tensors only, and its param groups
# (numbers) to state.json. Not get_optimizer_state_dict / set_optimizer_state_dict: they want one nn.Module that
# holds every trained parameter (the actor's and the critic's may be in two models), they create the state to
# load into by stepping the optimizer, and the param groups they return would go into DCP as pickled objects,
# which DCP reads back with torch.load(weights_only=False).
def _shard_state(trainable: dict[str, torch.Tensor], optimizer) -> dict[str, torch.Tensor]:
    names = {id(p): name for name, p in trainable.items()}
    tensors = {f"weights.{name}": p for name, p in trainable.items()}
    for p, values in optimizer.state.items():
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {key} of {names[id(p)]} is a {type(value).__name__}, not a tensor")
            tensors[f"optimizer.{names[id(p)]}.{key}"] = value
    return tensors


def _save_shards(path: Path, trainable: dict[str, torch.Tensor], optimizer) -> list[dict]:
    """This process's shards of the trained tensors and the optimizer state, into `path/dcp` (a collective);
    returns the optimizer's param groups."""
    dist.barrier()  # the main process has emptied and made `path`
    dcp.save(_shard_state(trainable, optimizer), storage_writer=dcp.FileSystemWriter(str(path / SHARDS)))
    return optimizer.state_dict()["param_groups"]


class _MetadataUnpickler(pickle.Unpickler):
    """Builds a DCP index's records and nothing else: a crafted `.metadata` fails instead of running code."""

    RECORDS = {("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "_MEM_FORMAT_ENCODING")} | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
        ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib._local", "PosixPath")}

    def find_class(self, module, name):
        if (module, name) in self.RECORDS or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                              torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def _load_shards(path: Path, groups: list[dict], trainable: dict[str, torch.Tensor], optimizer) -> None:
    index = path / SHARDS / ".metadata"
    try:
        with index.open("rb") as f:
            saved = _MetadataUnpickler(f).load().state_dict_metadata
    except pickle.UnpicklingError as e:
        raise ValueError(f"{index} holds objects other than a checkpoint's index; not loaded, since unpickling "
                         f"them could run code ({str(e)[:200]})") from None
    _check_tensors(path, trainable, {k[len("weights."):]: v.size for k, v in saved.items()
                                     if k.startswith("weights.")})
    targets = {f"weights.{name}": p for name, p in trainable.items()}
    names = {id(p): name for name, p in trainable.items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for i, p in enumerate(params):
        prefix = f"optimizer.{names[id(p)]}."
        for key, meta in saved.items():
            if key.startswith(prefix) and "." not in key[len(prefix):]:
                # a tensor of the parameter's shape is sharded as the parameter is (Adam's moments); others are
                # whole on every process (Adam's step count)
                like = tuple(meta.size) == tuple(p.shape)
                target = (torch.empty_like(p, dtype=meta.properties.dtype) if like
                          else torch.empty(tuple(meta.size), dtype=meta.properties.dtype))
                moments.setdefault(i, {})[key[len(prefix):]] = targets[key] = target
    # DCP reads the index again with pickle: the check above has shown it holds only index records
    dcp.load(targets, storage_reader=dcp.FileSystemReader(str(path / SHARDS)))
    optimizer.load_state_dict({"state": moments, "param_groups": groups})
