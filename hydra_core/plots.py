"""Curves as PNG files, for results a person would rather look at than read."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure


def plot_curves(history: list[dict], keys, path: str | Path, title: str = "") -> Path | None:
    """One small panel per metric in `keys` that `history` (rows with a `step`) contains; None if none does."""
    present = [k for k in keys if any(k in row and row[k] is not None for row in history)]
    if not present:
        return None
    cols = min(3, len(present))
    rows = math.ceil(len(present) / cols)
    # A bare Figure renders with the Agg canvas and leaves pyplot's global state (and backend) alone.
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="tight")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, key in zip(axes.flat, present):
        points = [(row["step"], row[key]) for row in history if row.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
