"""The model registry's rules: what gets registered under which name, and which version is champion.

A stage's output directory is logged as its run's `model` artifact folder and as an MLflow model
(LM_MODEL or REWARD_MODEL); versions are registered from that model, so `models:/<name>@<alias>`
loads and serves. The
Hydra-SFT model goes to SFT_MODEL; every judged PPO policy becomes a new version of POLICY_MODEL
with the alias `candidate`, and `champion` when it wins (`is_champion`). With several variants
registered in parallel, `settle_aliases` puts both aliases on the best of them once all are done.
"""

from __future__ import annotations

import math

from hydra_core.eval.report import metric_names
from hydra_core.tracking.mlflow_tracker import MlflowTracker, connect
from hydra_core.tracking.runs import Tracking

SFT_MODEL = "hydra-rlhf-sft"
POLICY_MODEL = "hydra-rlhf-policy"
MODEL_ARTIFACT = "model"  # where a stage's output directory goes in its MLflow run
# The MLflow models a stage logs, named apart from that folder: MLflow 3 reads `runs:/<run>/<name>`
# as the run's LoggedModel of that name when there is one, and no longer lists the folder.
LM_MODEL, REWARD_MODEL = "causal-lm", "reward-model"
CANDIDATE, CHAMPION = "candidate", "champion"
CHAMPION_THRESHOLD = 0.5
# a policy version's tag with its judged lower bound, named as the eval run's metric
[WIN_RATE_LOW] = metric_names({"win_rate_low": 0})
UNREGISTERED = {"off": "tracking is off (no tracking URI)",
                "pending": "MLflow was unreachable; the registration waits in the journal"}


def is_champion(win_rate_low: float | None, threshold: float) -> bool:
    """The champion rule: a policy is champion when the lower confidence bound of its judged
    win-rate against its baseline beats `threshold` (0.5: better than its SFT model, with confidence)."""
    return win_rate_low is not None and math.isfinite(win_rate_low) and win_rate_low > threshold


def register_policy(run: MlflowTracker, evaluation: dict, metrics: dict, policy_run_id: str, registered_model: str,
                    threshold: float, variant: str, parent_run_id: str = "") -> dict:
    """Register the policy that run `policy_run_id` logged as a new version of `registered_model`,
    judged by `evaluation` (an eval summary) whose `metrics` go onto the policy's MLflow model.
    Returns the decision, with a Markdown account of it."""
    low = evaluation["win_rate_low"]
    aliases = [CANDIDATE, CHAMPION] if is_champion(low, threshold) else [CANDIDATE]
    decision = {"variant": variant, "win_rate": evaluation["win_rate"], "win_rate_low": low,
                "champion_threshold": threshold, "registered_model": registered_model, "model_version": "",
                "aliases": []}
    if not registered_model:
        reason = "no registered model name was given"
    elif not policy_run_id:
        reason = "the PPO stage has no MLflow run to register from (tracking was off or pending)"
    else:
        tags = {"variant": variant, "data": evaluation["prompts"], "run_id": policy_run_id,
                "pipeline_run_id": parent_run_id, "judge": evaluation["judge"]["name"],
                "baseline": evaluation["baseline"],
                **metric_names({"win_rate": evaluation["win_rate"], "win_rate_low": low})}
        decision["model_version"] = run.register_model(registered_model, LM_MODEL, tags, aliases,
                                                       source_run_id=policy_run_id, model_metrics=metrics)
        reason = "" if decision["model_version"] else UNREGISTERED[run.state]
    if decision["model_version"]:
        decision["aliases"] = aliases
    decision["markdown"] = _decision_markdown(decision, reason)
    return decision


def _rate(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _decision_markdown(d: dict, reason: str) -> str:
    if reason:
        outcome = f"**Not registered**: {reason}."
    else:
        outcome = (f"Registered **{d['registered_model']}** version **{d['model_version']}** "
                   f"with aliases {', '.join(f'`{a}`' for a in d['aliases'])}.")
    verdict = "beats" if is_champion(d["win_rate_low"], d["champion_threshold"]) else "does not beat"
    return (f"# Policy {d['variant']}\n\n{outcome}\n\nJudged win-rate {_rate(d['win_rate'])}; its lower "
            f"confidence bound {_rate(d['win_rate_low'])} {verdict} the champion threshold "
            f"{d['champion_threshold']}.\n")


def settle_aliases(tracking: Tracking, registered_model: str, versions: list[str], threshold: float) -> str:
    """Point `candidate` at the version among `versions` with the best judged lower bound, and
    `champion` too when that version is champion by `is_champion`.

    Each register step moves the aliases when it finishes, so with several variants registered in
    parallel they would rest on whichever finished last; the compare step runs after all of them.
    Returns a Markdown line saying what it did ("" when there is nothing to settle).
    """
    versions = [v for v in versions if v]
    if not (tracking.resolved_uri and registered_model and versions):
        return ""

    def low(version) -> float:
        try:
            return float(version.tags.get(WIN_RATE_LOW))
        except (TypeError, ValueError):  # no win-rate: every judgment failed
            return -math.inf

    try:
        client = connect(tracking.resolved_uri)
        best = max((client.get_model_version(registered_model, v) for v in versions), key=low)
        client.set_registered_model_alias(registered_model, CANDIDATE, best.version)
        promote = is_champion(low(best), threshold)
        if promote:
            client.set_registered_model_alias(registered_model, CHAMPION, best.version)
    except Exception as e:  # noqa: BLE001 - the comparison stands without the aliases; say so
        return f"The aliases of {registered_model} were not settled: {type(e).__name__}: {e}"
    name = f"version {best.version} ({best.tags.get('variant', 'policy')}, lower bound {low(best):.3f})"
    return (f"`{CANDIDATE}` of {registered_model}: {name}. `{CHAMPION}`: "
            + (name if promote else f"unchanged, no variant's lower bound beat {threshold}") + ".")
