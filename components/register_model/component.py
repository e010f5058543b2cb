"""Register and promote: a new registered-model version of the evaluated policy, `candidate`
always, `champion` when it wins by hydra_core.registry's champion rule."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_model(
    evaluation: Input[Dataset],
    decision: Output[Markdown],
    policy_run_id: str,
    registered_model: str,
    champion_threshold: float,
    tracking_uri: str = "",
    experiment: str = "",
    parent_run_id: str = "",
) -> str:
    """Register the policy that MLflow run `policy_run_id` logged (its MLflow model `model`, which
    `models:/<registered_model>@champion` then loads) as a new version of `registered_model`, judged
    by `evaluation` (a pairwise_eval output), whose figures go onto that model. Writes the decision
    as Markdown; returns the new version ("" when nothing was registered)."""
    import os
    from pathlib import Path

    from hydra_core import selection
    from hydra_core.tracking.runs import Tracking, parent_from

    parent = parent_from(parent_run_id, evaluation.metadata)
    result = selection.register_policy(Tracking(tracking_uri, experiment, parent), evaluation.path, policy_run_id,
                                    registered_model, champion_threshold,
                                    variant=evaluation.metadata.get("variant") or "policy",
                                    record_dir=os.path.dirname(decision.path))
    Path(decision.path).write_text(result["markdown"], encoding="utf-8")
    return result["model_version"]
