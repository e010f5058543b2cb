"""Data-parallel processes: which one this is among those `torchrun` or `accelerate launch` started, and
the few collectives the RL loop needs.

PPO keeps its frozen backbones out of any wrapper: only the trained parameters (LoRA adapters, the value
head; every weight in `full`) have their gradients averaged, by an all-reduce after each mini-batch's
backward passes. DDP would do the same for one module with one forward per backward; the Hydra layouts
run several roles through one model (actor and critic adapters, each with its own backward), which DDP's
hooks do not follow. With one process every collective is the identity and nothing is initialised.

With `--shard-backbone` each model is sharded by FSDP2 (`models.hydra.shard_across_processes`): its
parameters become DTensors, each process holding one shard. FSDP itself averages their gradients (a
reduce-scatter in backward) and a shard exists once, so the collectives below leave DTensors alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from hydra_core.launch import launched_world

# gradients are averaged in flat buffers of at most this many elements: one buffer for a few LoRA sets,
# a handful for a `full` 1B model, without a second copy of every gradient at once
BUCKET_ELEMENTS = 1 << 24


def is_sharded(t: torch.Tensor) -> bool:
    """Whether `t` is a DTensor: a parameter FSDP shards over the processes."""
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """`t` whole: a sharded parameter gathered from every process (a collective: every process must ask, in the
    same order), any other tensor as it is."""
    return t.full_tensor() if is_sharded(t) else t


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls, device: torch.device) -> "Processes":
        """This process's place in the launched group, joining it (gloo on CPU, NCCL on CUDA) if no one
        has yet; on CUDA each process takes the GPU of its local rank."""
        world = launched_world()
        if world == 1:
            return cls(device=device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the processes (a new tensor; `value` itself is left alone)."""
        if self.world == 1:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total

    def broadcast_parameters(self, params: list[torch.nn.Parameter]) -> None:
        """Give every process the main process's values, so that they start equal however each
        initialised them. A sharded parameter is skipped: each of its shards lives on one process only, so
        there is nothing to make equal (and broadcasting rank 0's shard would overwrite the others')."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in params:
                if not is_sharded(p):
                    dist.broadcast(p.data, src=0)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over the processes (a missing one counts as 0).
        Sharded parameters are skipped: FSDP averaged theirs in backward, and their gradients are shards, a
        different part of the tensor on each process, which an all-reduce would mix."""
        if self.world == 1:
            return
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in (p for p in params if not is_sharded(p)):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if bucket and size + p.numel() > BUCKET_ELEMENTS:
                self._average(bucket)
                bucket, size = [], 0
            bucket.append(p)
            size += p.numel()
        if bucket:
            self._average(bucket)

    def _average(self, params: list[torch.nn.Parameter]) -> None:
        flat = torch.cat([p.grad.reshape(-1).float() for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def reduce_metrics(self, metrics: dict[str, float], maximum: tuple[str, ...] = ()) -> dict[str, float]:
        """Each metric's mean over the processes; those whose names start with one of `maximum` take the
        largest value instead (the slowest process sets a step's time, the fullest one its peak memory).
        Every process must hold the same metric names."""
        if self.world == 1:
            return metrics
        names = sorted(metrics)
        values = torch.tensor([float(metrics[n]) for n in names], dtype=torch.float64, device=self.device)
        largest = values.clone()
        dist.all_reduce(values)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        return {n: (largest[i] if n.startswith(maximum) else values[i] / self.world).item()
                for i, n in enumerate(names)}

    def gather(self, obj) -> list:
        """Every process's `obj` (picklable), in rank order, on every process."""
        if self.world == 1:
            return [obj]
        gathered = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
