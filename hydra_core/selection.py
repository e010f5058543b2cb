"""The pipeline's last steps, after evaluation: each judged policy registered (`register_policy`; the registry's
rules are in `hydra_core.registry`), then the variants compared side by side and the registry's aliases settled on
the best (`compare_variants`, which closes the pipeline's parent run).

They read evaluation results and write records only: nothing here imports torch or transformers, so these steps
start in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra_core import registry
from hydra_core.eval.report import FILES as EVAL_FILES
from hydra_core.eval.report import SUMMARY_METRICS as EVAL_METRICS
from hydra_core.eval.report import metric_names
from hydra_core.plots import plot_comparison
from hydra_core.stage_run import stage_run
from hydra_core.tracking.base import numeric_entries
from hydra_core.tracking.runs import Tracking


def register_policy(tracking: Tracking, evaluation_dir: str, policy_run_id: str, registered_model: str,
                    champion_threshold: float, variant: str, record_dir: str | Path) -> dict:
    """`registry.register_policy` in a `register-<variant>` run, for the policy that `evaluation_dir`
    (an eval output) judged."""
    evaluation = json.loads((Path(evaluation_dir) / EVAL_FILES["summary"]).read_text(encoding="utf-8"))
    with stage_run(tracking, f"register-{variant}", record_dir, tags={"variant": variant},
                    sources=evaluation.get("sources")) as run:
        run.log_params({"registered_model": registered_model, "champion_threshold": champion_threshold,
                        "policy_run_id": policy_run_id})
        metrics = metric_names(numeric_entries(evaluation, EVAL_METRICS))
        run.log_metrics(metrics, step=0)
        decision = registry.register_policy(run, evaluation, metrics, policy_run_id, registered_model,
                                            champion_threshold, variant, tracking.parent_run_id)
        run.set_tags({"decision": ",".join(decision["aliases"]) or "not registered"})
    return {**decision, "tracking": run.status()}


# (row key, title); the rows are pairwise_eval outputs' metadata: the eval's figures and the candidate's
COMPARISON_COLUMNS = (("variant", "label"), ("algorithm", "algorithm"), ("win_rate", "win-rate"),
                      ("win_rate_low", "low"), ("win_rate_high", "high"), ("wins", "W"), ("ties", "T"),
                      ("losses", "L"), ("errors", "E"), ("eval/gold_accuracy_before", "gold before"),
                      ("eval/gold_accuracy", "gold after"), ("memory/peak_bytes", "peak MiB"),
                      ("memory/trainable_params", "trainable"), ("time/s_per_sample", "s/sample"),
                      ("train_seconds", "train s"), ("stage_seconds", "stage s"))
BASELINES = {"hydra-sft": "Hydra-SFT", "sft": "SFT"}  # a model's `variant` -> how the table names it
COMPARISON_FILES = {"table": "comparison.md", "chart": "comparison.png"}


def comparison_rows(rows: list[dict]) -> list[dict]:
    """pairwise_eval outputs as table rows, best judged lower bound first. A policy's row names its
    run label and algorithm and the seconds its PPO loop trained; an SFT model's row (Hydra-SFT judged
    against the SFT model) has no algorithm and no gold accuracy before."""
    table = []
    for row in rows:
        row = dict(row)
        row.setdefault("algorithm", "-")
        if "train_seconds_this_run" in row:
            row["train_seconds"] = row["train_seconds_this_run"]
        table.append(row)
    return sorted(table, key=lambda r: -(r.get("win_rate_low") or 0.0))


def compare_variants(tracking: Tracking, rows: list[dict], record_dir: str | Path, registered_model: str = "",
                     versions: list[str] = (), champion_threshold: float = registry.CHAMPION_THRESHOLD) -> str:
    """The variants side by side, best lower bound first, as Markdown, and as a chart (win-rate with its
    interval, gold accuracy before and after) beside it in `record_dir`; both logged to the pipeline's
    run (with per-variant metrics), which is then closed. Every row was judged against one baseline,
    named in the title. Given the registered `versions` of the variants, the aliases are settled on
    the best of them (`registry.settle_aliases`)."""
    ranked = comparison_rows(rows)
    baselines = sorted({str(r.get("baseline", "hydra-sft")) for r in ranked}) or ["hydra-sft"]
    against = " and ".join(BASELINES.get(b, b) for b in baselines)
    lines = [f"# PPO variants against the {against} baseline", "",
             "| " + " | ".join(title for _, title in COMPARISON_COLUMNS) + " |",
             "|" + "---|" * len(COMPARISON_COLUMNS)]
    for row in ranked:
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _ in COMPARISON_COLUMNS) + " |")
    settled = registry.settle_aliases(tracking, registered_model, list(versions), champion_threshold)
    text = "\n".join([*lines, *(["", settled] if settled else [])]) + "\n"
    record_dir = Path(record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    table = record_dir / COMPARISON_FILES["table"]
    table.write_text(text, encoding="utf-8")
    chart = plot_comparison(ranked, record_dir / COMPARISON_FILES["chart"], title=f"judged against {against}")
    if tracking.parent_run_id:
        run = tracking.top_level().tracker("pipeline", record_dir, run_id=tracking.parent_run_id,
                                           system_metrics=False)
        for row in ranked:
            variant = row.get("variant", "policy")
            figures = metric_names(numeric_entries(row, EVAL_METRICS))
            run.log_metrics({f"{variant}/{name}": value for name, value in figures.items()}, step=0)
        for path in (table, chart):
            if path is not None:
                run.log_artifact(path)
        run.close("FINISHED")
    return text


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "memory/peak_bytes":
        return f"{value / 2**20:.0f}"
    if key.endswith("seconds"):
        return f"{value:.0f}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)
