"""Task verifiers: a gold judge for tasks that have one (the embedded arithmetic task)."""

from __future__ import annotations

from typing import Callable

from hydra_core.data import arithmetic
from hydra_core.data.splits import read_manifest

Verifier = Callable[[str, str], bool]  # (prompt, response) -> correct

VERIFIERS: dict[str, Verifier] = {"arithmetic": arithmetic.is_correct}


def verifier_for(prepared_dir) -> Verifier | None:
    """The verifier of the task a prepared directory was made for, or None if it has none."""
    return VERIFIERS.get(read_manifest(prepared_dir).get("task", ""))
