"""A stage's MLflow run: opened (nested under the pipeline's run when there is one, or reopened from a durable
checkpoint store), ended FAILED when the stage raises, its status written into the stage's summary file.

Apart from `stages` so that the pipeline's record-keeping steps (`selection`) use it without importing the
trainers: those steps then start without torch and transformers.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from hydra_core.tracking.mlflow_tracker import RUN_ID
from hydra_core.tracking.runs import STAGE_TAG, Tracking, main_process

if TYPE_CHECKING:
    from hydra_core.checkpoint_store import CheckpointStore


@contextmanager
def stage_run(tracking: Tracking, run_name: str, output_dir: str | Path, summary_file: Path | None = None,
               tags: dict | None = None, sources: dict | None = None, store: CheckpointStore | None = None):
    """The stage's MLflow run, ended FAILED if the stage raises; its status goes into the summary file.
    `sources` ({local path: what it stands for}) is what the run records in place of those paths
    (`MlflowTracker.name_sources`); they go into the summary file too, for the steps reading it. With a
    durable checkpoint `store`, the run an earlier attempt recorded there is reopened (a resumed stage logs
    into it), and a new run is recorded there; once the stage has finished, the store is removed."""
    earlier = store.recorded_run() if store and main_process() else ""
    run = tracking.tracker(run_name, output_dir, run_id=earlier, tags={STAGE_TAG: run_name, **(tags or {})})
    if store and main_process() and run.run_id != earlier:
        store.record_run(run.run_id)
    run.name_sources(sources or {})
    try:
        yield run
    except BaseException:
        run.close("FAILED")
        raise
    run.close("FINISHED")
    if store and store.durable and main_process():
        store.clear()
    if summary_file is not None and summary_file.exists() and main_process():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        summary["tracking"] = run.status()
        if sources:
            summary["sources"] = {path: source.replace(RUN_ID, run.run_id) for path, source in sources.items()}
        tmp = summary_file.with_name(summary_file.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, summary_file)
