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


def plot_comparison(rows: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Variants side by side: each row's judged win-rate with its interval (`win_rate`, `win_rate_low`,
    `win_rate_high`) and its greedy gold accuracy before and after (`eval/gold_accuracy_before`,
    `eval/gold_accuracy`), labelled by `variant`; None if no row has a win-rate."""
    rows = [row for row in rows if row.get("win_rate") is not None]
    if not rows:
        return None
    labels = [str(row.get("variant", "?")) for row in rows]
    x = list(range(len(rows)))
    fig = Figure(figsize=(max(6.0, 1.3 * len(rows) + 3.0), 3.6), layout="tight")
    win, gold = fig.subplots(1, 2)
    rates = [row["win_rate"] for row in rows]
    low = [rate - (row.get("win_rate_low") if row.get("win_rate_low") is not None else rate)
           for rate, row in zip(rates, rows)]
    high = [(row.get("win_rate_high") if row.get("win_rate_high") is not None else rate) - rate
            for rate, row in zip(rates, rows)]
    win.bar(x, rates, yerr=[low, high], capsize=4, color="tab:blue")
    win.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    win.set_ylim(0, 1)
    win.set_title("win-rate against the baseline (interval)", fontsize=9)
    width = 0.38
    for offset, key, name, colour in ((-width / 2, "eval/gold_accuracy_before", "before", "tab:grey"),
                                      (width / 2, "eval/gold_accuracy", "after", "tab:green")):
        values = [row.get(key) for row in rows]
        gold.bar([i + offset for i, v in zip(x, values) if v is not None], [v for v in values if v is not None],
                 width, label=name, color=colour)
    gold.set_ylim(0, 1.2)  # headroom: the legend sits above bars that reach 1
    gold.set_title("greedy gold accuracy", fontsize=9)
    gold.legend(fontsize=8, loc="upper center", ncol=2)
    for ax in (win, gold):
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
