"""Data-parallel PPO: seconds per sample with 1 and with N processes at the same global rollout batch.

Each run is `hydra-rlhf ppo` as a user starts it: one process, or `torchrun --nproc_per_node N` (gloo on
CPU, NCCL on GPUs). On CPU the processes share the machine's cores: one process gets all `--threads`,
each of N gets threads / N, so both sides use the same cores and the comparison is of the work split,
not of the hardware added. On GPUs each process takes a GPU of its own: there it is the hardware added. The runs alternate (1, N, 1, N, ...) so that drift in the machine's speed
hits both alike. A step's time is the slowest process's; the figure per run is the median over its
steps after the first (which warms up the allocator and kernels), and the table gives the median and
range over the repeats and the ratio of medians.

    .venv/bin/python benchmarks/ppo_processes.py --size tiny-llama --batch 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as ppo_variants.py: the sibling modules by name

from measure import REPO, ensure_models  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny-llama", help="a model preset (hydra-rlhf init-model --preset)")
    p.add_argument("--variant", default="hydra", help="a PPO run label: hydra, lora, hydra-grpo, ...")
    p.add_argument("--processes", type=int, default=2, help="N, compared with 1")
    p.add_argument("--batch", type=int, default=64, help="global rollout batch (prompts); N must divide it")
    p.add_argument("--mini-batch", type=int, default=0, help="global responses per optimizer step; 0 = the rollout")
    p.add_argument("--steps", type=int, default=4, help="PPO iterations per run (the first is not counted)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads in all, split evenly over the processes")
    p.add_argument("--out", default="outputs/benchmarks/ppo_processes")
    p.add_argument("--cache-dir", default="outputs/benchmarks/models")
    args = p.parse_args(argv)
    if args.processes < 2:
        p.error(f"--processes: {args.processes}; compare 1 process with at least 2")
    if args.batch % args.processes:
        p.error(f"--batch: {args.batch} prompts do not split evenly over {args.processes} processes")
    if args.steps < 2:
        p.error("--steps: at least 2 (the first step is warm-up and not counted)")
    if args.threads < args.processes:
        p.error(f"--threads: {args.threads} cannot give each of {args.processes} processes one")
    return args


def _data(cache: Path) -> Path:
    data = cache / "arithmetic-data"
    if not (data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "hydra_core.cli", "prepare", "--format", "arithmetic",
                        "--output-dir", str(data), "--max-records", "2000"], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    return data


def _run(args, processes: int, model: Path, data: Path, out: Path) -> dict:
    """One `hydra-rlhf ppo` run; its seconds per sample (median over steps 2..) and wall time."""
    from hydra_core.config.settings import parse_run_label

    label = parse_run_label(args.variant)
    layout, algorithm = label["variant"], label["algorithm"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    command = [*launcher, "-m", "hydra_core.cli", "ppo", "--model", str(model), "--data", str(data),
               "--output-dir", str(out), "--overwrite", "--variant", layout, "--algorithm", algorithm,
               "--samples-per-prompt", "1" if algorithm in ("ppo", "remax") else "2",
               "--steps", str(args.steps), "--rollout-batch-size", str(args.batch),
               "--mini-batch-size", str(args.mini_batch), "--ppo-epochs", "1", "--max-new-tokens", str(args.new_tokens),
               "--greedy-eval-prompts", "1", "--eval-every", "0", "--checkpoint-every", "0"]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},  # a timing, not a run to keep
           "OMP_NUM_THREADS": str(args.threads // processes)}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{processes}-process run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = [r["time/s_per_sample"] for r in rows if "time/s_per_sample" in r and r["step"] > 1]
    summary = json.loads((out / "ppo_summary.json").read_text())
    assert summary["processes"] == processes, summary["processes"]
    return {"processes": processes, "s_per_sample": statistics.median(per_step), "wall_s": wall,
            "peak_bytes": summary.get("memory/stage_peak_bytes") or summary.get("memory/peak_bytes")}


def _chart(results: dict[int, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = [f"{n} process{'es' if n > 1 else ''}" for n in results]
    medians = [statistics.median(r["s_per_sample"] * 1000 for r in runs) for runs in results.values()]
    ax.bar(labels, medians, color=["#888888", "#2a7ab9"])
    for i, runs in enumerate(results.values()):
        ax.scatter([i] * len(runs), [r["s_per_sample"] * 1000 for r in runs], color="black", s=12, zorder=3)
    ax.set_ylabel("ms per sample (median; dots: repeats)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, model = ensure_models(Path(args.cache_dir), args.size)
    data = _data(Path(args.cache_dir))
    counts = (1, args.processes)
    results: dict[int, list[dict]] = {n: [] for n in counts}
    for repeat in range(args.repeats):
        for n in counts:
            r = _run(args, n, model, data, out / f"run-{n}")
            results[n].append(r)
            print(f"repeat {repeat + 1}/{args.repeats}, {n} process(es): {1000 * r['s_per_sample']:.1f} ms/sample, "
                  f"{r['wall_s']:.0f} s wall", flush=True)
    one, many = ([r["s_per_sample"] for r in results[n]] for n in counts)
    ratio = statistics.median(many) / statistics.median(one)
    title = (f"{args.variant} PPO, {args.size}, global batch {args.batch}, {args.new_tokens} new tokens, "
             f"{args.threads} threads in all")
    lines = [title, "| processes | ms per sample: median (min-max) | wall s: median |", "|---|---|---|"]
    for n in counts:
        s = [1000 * r["s_per_sample"] for r in results[n]]
        lines.append(f"| {n} | {statistics.median(s):.1f} ({min(s):.1f}-{max(s):.1f}) | "
                     f"{statistics.median(r['wall_s'] for r in results[n]):.0f} |")
    lines.append(f"{args.processes} processes / 1 process, seconds per sample (ratio of medians): {ratio:.2f}")
    print("\n".join(lines))
    (out / "ppo_processes.json").write_text(json.dumps({"settings": vars(args), "ratio": ratio, "table": "\n".join(lines),
                                                        "runs": {str(n): rs for n, rs in results.items()}}, indent=2))
    _chart(results, out / "ppo_processes.png", title)
    print(f"written: {out / 'ppo_processes.json'}, {out / 'ppo_processes.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
