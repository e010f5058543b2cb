"""The tracking callback every stage reports to. The MLflow layer is one implementation; the
JSONL tracker below always runs too, so a run's metrics are on disk whatever else happens."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class Tracker:
    """Receives params, metric rows and artifacts. Subclasses override what they record."""

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict) -> None:
        pass

    def close(self) -> None:
        pass


MIB = 2**20


def in_mib(figures: dict, digits: int | None = None) -> dict:
    """`figures` as a person reads them: a byte count (`<name>_bytes`) in MiB (`<name>_mib`, rounded to
    `digits` when given); every other entry as it is."""
    out = {}
    for key, value in figures.items():
        if key.endswith("_bytes") and isinstance(value, (int, float)) and not isinstance(value, bool):
            key, value = key.removesuffix("_bytes") + "_mib", value / MIB
            value = round(value, digits) if digits is not None else value
        out[key] = value
    return out


def numeric_entries(summary: dict, keys) -> dict[str, float]:
    """The entries of `summary` among `keys` that can be logged as metrics (numbers, not None or bools)."""
    return {k: float(summary[k]) for k in keys
            if isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool)}


class JsonlTracker(Tracker):
    """Appends every metric row to `<dir>/metrics.jsonl`. (The params are the stage's saved config.)"""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.directory / "metrics.jsonl"
        self.history: list[dict] = []

    def start_from(self, rows: list[dict]) -> None:
        """Make the file hold `rows` alone (each with its `step`): a run resumed from a checkpoint starts from the
        rows the checkpoint kept, which also fills a new output folder (a retried pod's), and redoes the rest; a
        run started afresh (no rows) owns the file alone."""
        tmp = self.metrics_path.with_name(self.metrics_path.name + ".tmp")
        tmp.write_text("".join(self._line(row) for row in rows), encoding="utf-8")
        tmp.replace(self.metrics_path)

    @staticmethod
    def _line(row: dict) -> str:
        return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                           for k, v in row.items()}) + "\n"

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        with self.metrics_path.open("a") as f:
            f.write(self._line(row))


class MultiTracker(Tracker):
    def __init__(self, *trackers: Tracker):
        self.trackers = [t for t in trackers if t is not None]

    def log_params(self, params: dict) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def log_artifact(self, path, artifact_path=None) -> None:
        for t in self.trackers:
            t.log_artifact(path, artifact_path)

    def set_tags(self, tags: dict) -> None:
        for t in self.trackers:
            t.set_tags(tags)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
