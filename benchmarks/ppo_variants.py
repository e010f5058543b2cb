"""Memory and speed of the five PPO variants, and of the critic-free algorithms (RLOO, GRPO, ReMax) on
the hydra and lora layouts, against a full-fine-tune SFT step (the paper's Table 1).

Every measurement runs in a fresh process (this script with `--worker`), so each peak is that
run's own. All runs of one size share the model config, the batch and the lengths: prompts of
`--prompt-length` random characters and exactly `--new-tokens` sampled tokens per response (EOS is
suppressed until the cap through the generation config's `min_new_tokens`, so every variant and
every iteration generates the same number of tokens). `--batch` counts sampled responses, so every
run trains on the same number: RLOO and GRPO sample `--samples-per-prompt` responses to each of
batch / k prompts; ReMax samples one per prompt and adds the greedy response as its baseline. The
SFT baseline is one full fine-tune step
of the whole model (AdamW, LM loss on the response positions) on batches of the same shape.

    python benchmarks/ppo_variants.py --sizes tiny-llama,llama-30m --batch 8 \\
        --prompt-length 32 --new-tokens 16 --iterations 2
    python benchmarks/ppo_variants.py --sizes llama-120m --memory-budget 6GiB --variants lora,hydra

Peak memory is `torch.cuda.max_memory_allocated` on CUDA and the process peak RSS on CPU. RSS
includes the Python/torch runtime, so on CPU the RSS right after imports is recorded as a
baseline and subtracted to give the "net" figure (model + optimizer + activations + allocator
slack; glibc malloc is set to hand freed memory back, `--no-tight-malloc` to keep its default).
Beside the peaks come the exact bytes of parameters, trainable parameters, gradients (at the
optimizer step) and optimizer state.

`--memory-budget` finds, per variant, the largest batch whose peak fits the budget (doubling, then
bisection; each probe a fresh process; an OOM, a killed process or a peak over the budget does not
fit) and reports seconds per sample at that batch: the paper's latency lever.

Writes `ppo_variants.json` and `ppo_variants.png` to `--out`; prints a table and the targets.

This file is the entry point (arguments, the runs, the output); `measure.py` is the worker and how
one is started, `budget.py` the budget search, `report.py` the table, targets, notes and chart.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from hydra_core.config.settings import MODEL_PRESETS as SIZES
from hydra_core.config.fields import ConfigError, build
from hydra_core.config.settings import (PPO_VARIANTS, PRECISIONS, ROLLOUT_ENGINES, RUN_LABELS, PPOConfig, parse_bytes,
                                        parse_run_label, run_label, vllm_missing)

# The sibling modules are imported by name. Python puts a script's own directory first on sys.path,
# but not under -P or PYTHONSAFEPATH, nor when this file is loaded from elsewhere (a test, runpy).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from budget import search_batch  # noqa: E402
from measure import (BANDWIDTH, LEVERS, REPO, SFT, MiB, describe_run, ensure_models, run_worker,  # noqa: E402
                     split_run, worker, worker_spec)
from report import (add_decode_floor, chart, describe_target, fmt_mib, fmt_num, run_notes, table,  # noqa: E402
                    targets)

ALL_RUNS = (SFT, *RUN_LABELS)
# by default the Llama sizes the figures in docs/benchmarks.md come from; any other preset (tiny-qwen2, ...) when named
DEFAULT_SIZES = ("tiny-llama", "llama-30m", "llama-120m")
# by default: SFT, PPO on every layout, and each critic-free algorithm on hydra and on lora
DEFAULT_RUNS = (SFT, *PPO_VARIANTS, *(run_label(layout, algorithm) for algorithm in ("rloo", "grpo", "remax")
                                      for layout in ("hydra", "lora")))

def byte_size(text: str) -> int:
    """--memory-budget as `hydra-rlhf ppo --memory-budget` reads it ('2GiB', '1.5G', '500MB', '123456')."""
    try:
        return parse_bytes(text)
    except ValueError as e:  # argparse shows an ArgumentTypeError's own words, a ValueError's not
        raise argparse.ArgumentTypeError(str(e)) from None


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {', '.join(choices)}")
        return list(dict.fromkeys(items))
    return parse


def _runs(text: str) -> list[str]:
    """--variants: sft or run labels, a PPO one with memory levers after "+" if asked (`hydra+4bit+gc`)."""
    items = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    for item in items or [text]:
        label, *levers = item.split("+")
        if label not in ALL_RUNS:
            raise argparse.ArgumentTypeError(f"unknown {label!r}; choose from {', '.join(ALL_RUNS)}")
        if not set(levers) <= set(LEVERS) or levers and label == SFT:
            raise argparse.ArgumentTypeError(f"{item}: a PPO run's levers are {', '.join(LEVERS)} (hydra+4bit+gc)")
        if levers:  # the levers' own checks: a quantised backbone only where its layout allows one
            try:
                build(PPOConfig, ({**parse_run_label(label), **split_run(item)[1]}, lambda name: name))
            except ConfigError as e:
                raise argparse.ArgumentTypeError(f"{item}: {e}") from None
    return items


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_csv(SIZES), default=list(DEFAULT_SIZES),
                   help=f"comma-separated presets (default: {','.join(DEFAULT_SIZES)})")
    p.add_argument("--variants", type=_runs, default=list(DEFAULT_RUNS),
                   help="comma-separated runs: sft, a layout (PPO) or layout-algorithm such as hydra-grpo, each PPO "
                        f"run with memory levers after '+' if asked ({', '.join(LEVERS)}: hydra+4bit, hydra+gc) "
                        f"(default: {','.join(DEFAULT_RUNS)})")
    p.add_argument("--rollout-engine", type=_csv(ROLLOUT_ENGINES), default=["hf"],
                   help="who samples the rollouts: hf, vllm or hf,vllm (each PPO run once per engine, `label+vllm`)")
    p.add_argument("--batch", type=int, default=8, help="sampled responses per iteration = SFT batch")
    p.add_argument("--samples-per-prompt", type=int, default=4,
                   help="RLOO and GRPO: responses per prompt (a group); must divide --batch")
    p.add_argument("--mini-batch-size", type=int, default=0, help="PPO mini-batch (default: the batch)")
    p.add_argument("--prompt-length", type=int, default=32, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=16, help="generated tokens per response (always reached)")
    p.add_argument("--iterations", type=int, default=2, help="measured iterations after the warm-up")
    p.add_argument("--warmup", type=int, default=1, help="iterations run first and left out of the timings")
    p.add_argument("--timing-stat", choices=("mean", "median", "min"), default="mean",
                   help="how the measured iterations' timings combine (median/min resist a busy machine)")
    p.add_argument("--ppo-epochs", type=int, default=1, help="PPO epochs per iteration (the paper: 1)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--mixed-precision", choices=PRECISIONS, default="auto",
                   help="as the trainers' setting: auto = bf16 where the hardware does bf16 maths natively; no = fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="", help="'' = CUDA when available, else CPU")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (0 = torch default)")
    p.add_argument("--tight-malloc", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: glibc malloc settings that make RSS follow live memory (default: on)")
    p.add_argument("--memory-budget", type=byte_size, default=None,
                   help="find each variant's largest batch within this peak (e.g. 2GiB)")
    p.add_argument("--budget-only", action="store_true", help="with --memory-budget: skip the fixed-batch runs")
    p.add_argument("--min-batch", type=int, default=1, help="first batch the budget search tries")
    p.add_argument("--max-batch", type=int, default=512, help="largest batch the budget search tries")
    p.add_argument("--bisect-tolerance", type=float, default=0.0,
                   help="stop bisecting when the gap is within this fraction of the batch (0 = exact)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker before it is killed")
    p.add_argument("--cache-dir", type=Path, default=REPO / "outputs" / "benchmarks" / "models")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "ppo_variants")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None:
        for name in ("batch", "prompt_length", "new_tokens", "iterations", "min_batch", "max_batch"):
            if getattr(args, name) < 1:
                p.error(f"--{name.replace('_', '-')} must be at least 1")
        quantised = [v for v in args.variants if split_run(v)[1].get("quantize_backbone")]
        if quantised and importlib.util.find_spec("bitsandbytes") is None:
            p.error(f"--variants {','.join(quantised)}: a quantised backbone needs bitsandbytes, an optional extra: "
                    "pip install 'hydra-rlhf[quantization]'")
        if "vllm" in args.rollout_engine and (problem := vllm_missing()):
            p.error(f"--rollout-engine vllm {problem}")
        args.variants = with_engines(args.variants, args.rollout_engine)
        grouped = [v for v in args.variants if split_run(v)[0].endswith(("-rloo", "-grpo"))]
        if grouped and (args.samples_per_prompt < 2 or args.batch % args.samples_per_prompt):
            p.error(f"--samples-per-prompt: {args.samples_per_prompt} must be at least 2 and divide --batch "
                    f"({args.batch}) for {', '.join(grouped)}")
    return args


def with_engines(runs: list[str], engines: list[str]) -> list[str]:
    """Each PPO run once per rollout engine, side by side (`hydra`, `hydra+vllm`); the SFT baseline, and the runs
    vLLM cannot serve (full, a quantised backbone), once with hf."""
    out = []
    for run in runs:
        label, levers = split_run(run)
        served = label != SFT and parse_run_label(label)["variant"] != "full" and "quantize_backbone" not in levers
        out += [run if engine == "hf" else f"{run}+{engine}" for engine in engines if engine == "hf" or served]
    return list(dict.fromkeys(out))


def _cuda_expected(device: str) -> bool:
    if device:
        return device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(json.loads(args.worker), args.result)

    cuda = _cuda_expected(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    found: list[dict] = []
    started, load_before = time.perf_counter(), os.getloadavg()
    bandwidth = None
    if not args.budget_only:
        reading = run_worker(worker_spec(args, "-", BANDWIDTH, 0, ("", "")), args.timeout)
        bandwidth = reading.get("bandwidth_bytes_per_s")
        print(f"memory bandwidth (streaming read): {fmt_num(bandwidth and bandwidth / 1e9, '{:.1f}')} GB/s", flush=True)
    for size in args.sizes:
        dirs = ensure_models(args.cache_dir, size)
        if not args.budget_only:
            for variant in args.variants:
                print(f"{size} {variant} batch {args.batch} ...", flush=True)
                result = run_worker(worker_spec(args, size, variant, args.batch, dirs), args.timeout)
                print(f"  -> {describe_run(result)}", flush=True)
                runs.append(result)
        if args.memory_budget:
            for variant in args.variants:
                print(f"{size} {variant}: largest batch within {args.memory_budget / MiB:.0f} MiB ...", flush=True)
                found.append(search_batch(args, size, variant, dirs, args.memory_budget, cuda))
                b = found[-1]
                print(f"  -> batch {b['max_batch']}{' (the cap)' if b['capped'] else ''}, "
                      f"{fmt_num(b['s_per_sample'], '{:.4f}')} s/sample", flush=True)

    add_decode_floor(runs, bandwidth)
    device = next((r["device"] for r in runs + [p for b in found for p in b["probes"]] if r.get("device")), None)
    notes = run_notes(args, runs, cuda, load_before)
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if k not in ("worker", "result")},
        "device": device,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "notes": notes,
        "memory_bandwidth_bytes_per_s": bandwidth,
        "runs": runs,
        "budget": found,
        "wall_s": time.perf_counter() - started,
    }
    report["targets"] = targets(runs, found, cuda)
    (args.out / "ppo_variants.json").write_text(json.dumps(report, indent=2))
    if runs or found:
        chart(runs, found, args.out / "ppo_variants.png", cuda)

    print()
    if runs:
        print(table(runs, cuda))
    if found:
        print(f"\nlargest batch within {args.memory_budget / MiB:,.0f} MiB:")
        for b in found:
            print(f"  {b['size']:>10} {b['variant']:>12}: batch {b['max_batch']}{'+ (cap)' if b['capped'] else ''}, "
                  f"{fmt_num(b['s_per_sample'], '{:.4f}')} s/sample, peak {fmt_mib(b['peak_bytes'])} MiB")
    print()
    for note in notes:
        print("note:", note)
    print("\ntargets (reported, not asserted):")
    for t in report["targets"]:
        print("  " + describe_target(t))
    if not report["targets"]:
        print("  none measurable with these runs (need hydra with sft/full; lora and hydra with --memory-budget)")
    print(f"\nwrote {args.out / 'ppo_variants.json'} and {args.out / 'ppo_variants.png'}")
    failed = [r for r in runs if r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
