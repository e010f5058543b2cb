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

    def close(self) -> None:
        pass


class JsonlTracker(Tracker):
    """Appends every metric row to `<dir>/metrics.jsonl` and params to `<dir>/params.json`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.directory / "metrics.jsonl"
        self.history: list[dict] = []

    def log_params(self, params: dict) -> None:
        path = self.directory / "params.json"
        merged = {**(json.loads(path.read_text()) if path.exists() else {}), **params}
        path.write_text(json.dumps(merged, indent=2, default=str))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in row.items()}) + "\n")


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

    def close(self) -> None:
        for t in self.trackers:
            t.close()
