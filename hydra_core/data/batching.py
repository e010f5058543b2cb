"""Deterministic, resumable batches: an epoch is a seeded permutation, and each process takes its
own slice of every global batch, so one process and N processes see the same data."""

from __future__ import annotations

import torch


class BatchStream:
    def __init__(self, records: list, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if not records:
            raise ValueError("cannot draw batches from an empty set of records")
        self.records, self.batch_size, self.seed = records, batch_size, seed
        self.rank, self.world = rank, world
        self.position = 0  # records consumed from the epoch stream, across all processes
        self._cached: tuple[int, list[int]] = (-1, [])

    def _order(self, epoch: int) -> list[int]:
        if self._cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cached = (epoch, torch.randperm(len(self.records), generator=g).tolist())
        return self._cached[1]

    def next(self) -> list:
        n = len(self.records)
        global_size = self.batch_size * self.world
        start = self.position + self.rank * self.batch_size
        picked = []
        for i in range(start, start + self.batch_size):
            epoch, offset = divmod(i, n)
            picked.append(self.records[self._order(epoch)[offset]])
        self.position += global_size
        return picked

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]
