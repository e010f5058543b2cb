"""Compare: the PPO variants' evaluations side by side; closes the pipeline's MLflow run."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compare_variants(
    evaluations: Input[List[Dataset]],
    comparison: Output[Markdown],
    hydra_sft_evaluation: Optional[Input[Dataset]] = None,
    tracking_uri: str = "",
    experiment: str = "",
    parent_run_id: str = "",
    registered_model: str = "",
    versions: List[str] = [],
    champion_threshold: float = 0.5,
) -> None:
    """A Markdown table of pairwise_eval outputs (run label, algorithm, win-rate and its interval,
    W/T/L, gold accuracy before and after, memory, speed, time), best lower bound first, and a chart
    of it (comparison.png beside the table). `hydra_sft_evaluation`, Hydra-SFT judged against the same
    baseline (the paper's "does joint training hurt the policy" row), joins the table when given.
    With `parent_run_id`, the table, the chart and each variant's win-rates go to that MLflow run,
    which is then closed. Given the versions of `registered_model` that register_model made for the
    variants, `candidate` (and `champion`, past `champion_threshold`) move to the best."""
    import os
    from pathlib import Path

    from hydra_core import selection
    from hydra_core.tracking.runs import Tracking

    rows = [dict(e.metadata) for e in evaluations]
    if hydra_sft_evaluation is not None:
        rows.append(dict(hydra_sft_evaluation.metadata))
    text = selection.compare_variants(Tracking(tracking_uri, experiment, parent_run_id), rows,
                                   record_dir=os.path.dirname(comparison.path), registered_model=registered_model,
                                   versions=versions, champion_threshold=champion_threshold)
    Path(comparison.path).write_text(text, encoding="utf-8")
