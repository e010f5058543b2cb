"""What an evaluation leaves on disk: the per-prompt table, the summary, an HTML report, a chart."""

from __future__ import annotations

import base64
import csv
import html
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

from matplotlib.figure import Figure

from hydra_core.eval.pairwise import PairResult

FILES = {
    "judgments": "judgments.jsonl",
    "judgments_csv": "judgments.csv",
    "chart": "winrate.png",
    "report": "report.html",
    "summary": "eval_summary.json",
}
# the summary's figures, logged under the names `metric_names` gives them
SUMMARY_METRICS = ("win_rate", "win_rate_low", "win_rate_high", "wins", "ties", "losses", "errors", "position_bias")
COLOURS = {"wins": "#2e7d32", "ties": "#9e9e9e", "losses": "#c62828", "errors": "#f9a825"}


def metric_names(figures: dict[str, float]) -> dict[str, float]:
    """The summary's `figures` under their one name wherever they are logged (the eval run, the
    Kubeflow Metrics output, a registered version's run): `eval/<key>`, as the training stages'
    `eval/gold_accuracy`, so a chart or a search finds the win-rate under one name."""
    return {f"eval/{key}": value for key, value in figures.items()}


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def headline(summary: dict) -> str:
    s = summary
    return (f"candidate vs baseline ({s['judge']['name']} judge): win-rate {_rate(s['win_rate'])} "
            f"[{_rate(s['win_rate_low'])}, {_rate(s['win_rate_high'])}], "
            f"W/T/L/E {s['wins']}/{s['ties']}/{s['losses']}/{s['errors']}, "
            f"position bias {_rate(s['position_bias'])}")


@contextmanager
def _replacing(path: Path):
    """A temporary path beside `path` (same suffix) that replaces it once written: a reader sees the
    old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.stem}.writing{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(output_dir: str | Path, results: list[PairResult], summary: dict) -> dict[str, Path]:
    """Write every file of FILES into `output_dir`, each whole or not at all; the summary goes last,
    naming the others."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / file for name, file in FILES.items()}
    rows = [asdict(r) for r in results]
    with _replacing(paths["judgments"]) as tmp:
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    with _replacing(paths["judgments_csv"]) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(PairResult)])
        writer.writeheader()
        writer.writerows(rows)
    with _replacing(paths["chart"]) as tmp:
        plot_winrate(summary, tmp)
        chart = tmp.read_bytes()
    with _replacing(paths["report"]) as tmp:
        tmp.write_text(render_html(summary, rows, chart), encoding="utf-8")
    summary["files"] = {name: path.name for name, path in paths.items()}
    with _replacing(paths["summary"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return paths


def plot_winrate(summary: dict, path: Path) -> None:
    # A bare Figure renders with the Agg canvas and leaves pyplot's global state alone.
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    counts_ax, rate_ax = fig.subplots(1, 2, width_ratios=(3, 1))
    left = 0
    for name, colour in COLOURS.items():
        count = summary[name]
        counts_ax.barh([0], [count], left=left, color=colour, label=f"{name} {count}")
        left += count
    counts_ax.set_yticks([])
    counts_ax.set_xlabel("pairs")
    counts_ax.set_title("outcomes for the candidate")
    counts_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=4, frameon=False)

    rate_ax.axhline(0.5, color="#9e9e9e", linestyle="--", linewidth=1)
    rate_ax.set_ylim(0, 1)
    rate_ax.set_xticks([])
    rate_ax.set_title(f"win-rate, {summary['confidence']:.0%} CI")
    rate = summary["win_rate"]
    if rate is None:
        rate_ax.text(0, 0.5, "nothing judged", ha="center", va="center")
        rate_ax.set_xlim(-1, 1)
    else:
        error = [[rate - summary["win_rate_low"]], [summary["win_rate_high"] - rate]]
        rate_ax.errorbar([0], [rate], yerr=error, fmt="o", color="#1565c0", capsize=8)
        rate_ax.annotate(f"{rate:.2f}", (0, rate), xytext=(10, 0), textcoords="offset points", va="center")
    fig.savefig(path, dpi=100)


def render_html(summary: dict, rows: list[dict], chart_png: bytes) -> str:
    """One self-contained page: the chart is inlined and every piece of text is escaped."""
    e = html.escape
    chart = base64.b64encode(chart_png).decode("ascii")
    summary_rows = "".join(
        f"<tr><th>{e(key)}</th><td>{_cell(value)}</td></tr>"
        for key, value in summary.items() if key != "headline")
    columns = [field.name for field in fields(PairResult)]
    header = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = "".join(
        f'<tr class="{e(row["outcome"])}">' + "".join(f"<td>{_cell(row[c])}</td>" for c in columns) + "</tr>"
        for row in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Pairwise evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
td {{ white-space: pre-wrap; max-width: 40em; }}
tr.win {{ background: #e8f5e9; }} tr.loss {{ background: #ffebee; }} tr.error {{ background: #fff8e1; }}
</style></head><body>
<h1>Pairwise evaluation</h1>
<p><strong>{e(summary["headline"])}</strong></p>
<img alt="win-rate chart" src="data:image/png;base64,{chart}">
<h2>Summary</h2>
<table>{summary_rows}</table>
<h2>Judgments</h2>
<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>
</body></html>
"""


def _cell(value) -> str:
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value, indent=2, ensure_ascii=False))
    return html.escape("n/a" if value is None else str(value))
