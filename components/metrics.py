"""What each component reports in its Kubeflow `Metrics` output: a few scalars of its stage's summary,
the figures a person compares across runs in the Kubeflow UI."""

import json
from pathlib import Path

from hydra_core.data.splits import SPLIT_FILES
from hydra_core.eval.report import SUMMARY_METRICS
from hydra_core.tracking.base import in_mib, numeric_entries

DATA_KEYS = tuple(f"data/{name}" for name in SPLIT_FILES)
SFT_KEYS = ("eval/reward_accuracy", "eval/gold_accuracy", "eval/lm_loss", "train/loss", "train_seconds",
            "memory/peak_bytes")
PPO_KEYS = ("objective/scores", "objective/kl", "policy/clipfrac", "eval/gold_accuracy_before", "eval/gold_accuracy",
            "memory/peak_bytes", "memory/trainable_params", "time/s_per_sample", "train_seconds_this_run",
            "stage_seconds")
EVAL_KEYS = SUMMARY_METRICS


def fill_metrics(metrics, summary: dict, keys, named=dict) -> dict[str, float]:
    """Report the numbers of `summary` among `keys` to `metrics` (a Kubeflow Metrics artifact) under the
    names `named` gives them (the eval's: hydra_core.eval.report.metric_names), byte counts in MiB
    (`memory/peak_mib`) as MLflow has them; returns them by their summary keys, which the output's metadata
    carries."""
    values = numeric_entries(summary, keys)
    reported = in_mib(named(values))
    for name, value in reported.items():
        metrics.log_metric(name, value)
    # kfp keeps the numbers in the artifact's metadata and writes no file, which its local cache takes for an
    # output that has gone: without the file, a step would never be taken from the cache (`run --resume`)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(reported, indent=2), encoding="utf-8")
    return values
