"""Memory and speed of the five PPO variants against a full-fine-tune SFT step (the paper's Table 1).

Every measurement runs in a fresh process (this script with `--worker`), so each peak is that
run's own. All runs of one size share the model config, the batch and the lengths: prompts of
`--prompt-length` random characters and exactly `--new-tokens` sampled tokens per response (EOS is
suppressed until the cap through the generation config's `min_new_tokens`, so every variant and
every iteration generates the same number of tokens). The SFT baseline is one full fine-tune step
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
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra_core.config import MODEL_PRESETS as SIZES
from hydra_core.config import PPO_VARIANTS

SFT = "sft"
ALL_RUNS = (SFT, *PPO_VARIANTS)
REPO = Path(__file__).resolve().parents[1]
MiB = 2**20
# glibc: allocations over 128 KiB get their own mapping and freed memory goes back to the OS, so a
# CPU worker's RSS follows its live tensors (as max_memory_allocated does on CUDA) instead of the
# heap's high-water slack. Applied to every run alike; --no-tight-malloc turns it off.
TIGHT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}

# --- small helpers -------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'2GiB', '1.5G', '500MB', '123456' -> bytes (K/M/G alone mean powers of ten)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (try 2GiB, 1500MB or 123456)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {', '.join(choices)}")
        return list(dict.fromkeys(items))
    return parse


def _mib(n) -> str:
    return "-" if n is None else f"{n / MiB:,.0f}" if n >= 100 * MiB else f"{n / MiB:,.1f}"


def _num(x, fmt="{:.3g}") -> str:
    return "-" if x is None else fmt.format(x)


# =========================================================================================
# worker: one measurement in this (fresh) process
# =========================================================================================

def _rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class _Meter:
    """Process-peak bookkeeping: a peak per measured interval, and the lifetime peak."""

    def __init__(self, device):
        import torch

        from hydra_core.memory import reset_peak

        self.torch, self.device = torch, device
        self.cuda = device.type == "cuda"
        self.baseline = torch.cuda.memory_allocated(device) if self.cuda else _rss_now()
        reset_peak(device)
        self.lifetime = 0

    def peak(self) -> int:
        from hydra_core.memory import peak_bytes

        value = peak_bytes(self.device)
        self.lifetime = max(self.lifetime, value)
        return value

    def note(self, value: int) -> int:
        self.lifetime = max(self.lifetime, value)
        return value

    def reset(self) -> None:
        from hydra_core.memory import reset_peak

        self.peak()  # keep the lifetime mark before wiping the kernel's
        reset_peak(self.device)


def _grad_probe(optimizer) -> dict:
    """Record the bytes of gradients present at each optimizer step (their peak)."""
    seen = {"grad_bytes": 0}

    def hook(opt, args, kwargs):
        total = sum(p.grad.numel() * p.grad.element_size()
                    for group in opt.param_groups for p in group["params"] if p.grad is not None)
        seen["grad_bytes"] = max(seen["grad_bytes"], total)

    optimizer.register_step_pre_hook(hook)
    return seen


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prompts(rng, n: int, length: int):
    from hydra_core.data.schema import EvalPrompt

    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return [EvalPrompt("".join(rng.choice(alphabet) for _ in range(length))) for _ in range(n)]


def _summarise(rows: list[dict], stat: str) -> dict:
    """Per key, the mean (or median, or minimum) over the measured iterations."""
    import statistics

    pick = {"mean": statistics.fmean, "median": statistics.median, "min": min}[stat]
    return {k: pick([float(r[k]) for r in rows]) for k in rows[0]}


def _ppo_worker(spec: dict, device, meter: _Meter) -> dict:
    import random


    from hydra_core.config import PPOConfig
    from hydra_core.memory import model_memory
    from hydra_core.ppo.roles import PolicyStack
    from hydra_core.ppo.trainer import build_optimizer, ppo_iteration
    from hydra_core.runtime import seed_everything

    batch = spec["batch"]
    cfg = PPOConfig(model=spec["model_dir"], data="", output_dir="", variant=spec["variant"], steps=spec["steps"],
                    rollout_batch_size=batch, mini_batch_size=min(spec["mini_batch"] or batch, batch),
                    ppo_epochs=spec["ppo_epochs"], lora_rank=spec["lora_rank"], lora_alpha=2 * spec["lora_rank"],
                    max_new_tokens=spec["new_tokens"], max_prompt_length=spec["prompt_length"],
                    lr_schedule="constant", seed=spec["seed"], device=str(device))
    seed_everything(cfg.seed)
    stack = PolicyStack(cfg, device)
    # Every response runs to the cap: no EOS before `max_new_tokens`, so all variants do equal work.
    for model in stack.unique_modules():
        model.base_model.generation_config.min_new_tokens = cfg.max_new_tokens
    optimizer, scheduler = build_optimizer(cfg, stack)  # run_ppo's (the schedule is constant here)
    grads = _grad_probe(optimizer)
    load_peak = meter.peak()

    rng = random.Random(cfg.seed)
    rows = []
    for step in range(1, cfg.steps + 1):
        prompts = _prompts(rng, batch, cfg.max_prompt_length)
        meter.reset()
        _sync(device)
        t0 = time.perf_counter()
        metrics = ppo_iteration(cfg, stack, prompts, optimizer, scheduler, step, None)
        _sync(device)
        wall = time.perf_counter() - t0  # the whole iteration, synchronised (phase times are the loop's own)
        tokens = metrics["time/tokens_per_s"] * metrics["time/step_s"]
        metrics.update({"time/iteration_s": wall, "time/s_per_sample": wall / batch, "time/tokens_per_s": tokens / wall})
        # ppo_iteration resets the CUDA peak per phase: its own per-phase maximum covers the early phases
        metrics["iteration_peak_bytes"] = meter.note(max(meter.peak(), metrics["memory/peak_bytes"]))
        rows.append(metrics)
        print(f"  [{spec['size']} {cfg.variant} b={batch}] iteration {step}/{cfg.steps}: {wall:.2f}s, "
              f"peak {metrics['iteration_peak_bytes'] / MiB:.0f} MiB", file=sys.stderr)

    trainable = list(stack.named_trainable().values())
    memory = model_memory(stack.unique_modules(), [optimizer], trainable=trainable)
    measured = rows[spec["warmup"]:] or rows
    summary = _summarise(measured, spec.get("timing_stat", "mean"))
    return {
        "load_peak_bytes": load_peak,
        "iteration_peak_bytes": max(r["iteration_peak_bytes"] for r in rows),
        "memory": {**memory, "memory/grad_bytes": grads["grad_bytes"]},
        "backbones": len(stack.unique_modules()),
        "s_per_sample": summary["time/s_per_sample"],
        "tokens_per_s": summary["time/tokens_per_s"],
        "step_s": summary["time/iteration_s"],
        "phases_s": {p: summary[f"time/{p}_s"] for p in ("generation", "scoring", "training")},
        "phase_peaks_bytes": {p: max(r[f"memory/peak_{p}_bytes"] for r in rows)
                              for p in ("generation", "scoring", "training")},
        "response_length": summary["val/response_length"],
        "eos_rate": summary["val/eos_rate"],
        "iterations": [{k: v for k, v in r.items() if k.startswith(("time/", "memory/", "iteration_"))}
                       for r in rows],
    }


def _sft_worker(spec: dict, device, meter: _Meter) -> dict:
    """One full fine-tune step of the whole model per iteration: the memory of plain SFT."""
    import contextlib

    import torch

    from hydra_core.data.encoding import IGNORE_INDEX
    from hydra_core.memory import model_memory
    from hydra_core.models.hydra import load_hydra
    from hydra_core.runtime import default_dtype, seed_everything
    from hydra_core.sft.metrics import lm_loss

    seed_everything(spec["seed"])
    # As `hydra_core.sft.trainer` does it: fp32 weights, bf16 autocast on a GPU.
    model = load_hydra(spec["base_dir"], heads=(), device=device, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    grads = _grad_probe(optimizer)
    autocast = (torch.autocast("cuda", dtype=default_dtype(device)) if device.type == "cuda"
                else contextlib.nullcontext())
    load_peak = meter.peak()

    batch, P, R = spec["batch"], spec["prompt_length"], spec["new_tokens"]
    tok = model.tokenizer
    low = max(tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) + 1
    high = len(tok)  # real character tokens only, as a prompt + response would be
    rows = []
    for step in range(1, spec["steps"] + 1):
        ids = torch.randint(low, high, (batch, P + R), device=device)
        mask = torch.ones_like(ids)
        labels = ids.clone()
        labels[:, :P] = IGNORE_INDEX  # the loss is on the response, as in SFT on demonstrations
        meter.reset()
        _sync(device)
        t0 = time.perf_counter()
        with autocast:
            out = model(ids, mask)
            loss = lm_loss(out.logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss.item()
        _sync(device)
        elapsed = time.perf_counter() - t0
        rows.append({"step_s": elapsed, "peak": meter.peak()})
        print(f"  [{spec['size']} sft b={batch}] step {step}/{spec['steps']}: {elapsed:.2f}s, "
              f"peak {rows[-1]['peak'] / MiB:.0f} MiB", file=sys.stderr)
    memory = model_memory([model], [optimizer])
    measured = rows[spec["warmup"]:] or rows
    step_s = _summarise(measured, spec.get("timing_stat", "mean"))["step_s"]
    return {
        "load_peak_bytes": load_peak,
        "iteration_peak_bytes": max(r["peak"] for r in rows),
        "memory": {**memory, "memory/grad_bytes": grads["grad_bytes"]},
        "backbones": 1,
        "s_per_sample": step_s / batch,
        "tokens_per_s": batch * (P + R) / step_s,
        "step_s": step_s,
        "phases_s": {"training": step_s},
        "iterations": [{"time/step_s": r["step_s"], "iteration_peak_bytes": r["peak"]} for r in rows],
    }


def worker(spec: dict, result_path: Path) -> int:
    """Measure one run and write its result JSON. Imports happen here, after the process starts."""
    import torch

    from hydra_core.runtime import pick_device

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = pick_device(spec.get("device") or None)
    if device.type == "cuda" and spec.get("memory_limit"):
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["memory_limit"] / total), device)
    # Touch the runtime (kernels, thread pools) before the baseline, so it holds no model bytes.
    (torch.randn(64, 64, device=device) @ torch.randn(64, 64, device=device)).sum().item()
    import hydra_core.ppo.trainer  # noqa: F401  (every import the run needs, before the baseline)
    import hydra_core.sft.metrics  # noqa: F401
    import peft  # noqa: F401

    meter = _Meter(device)
    result = {"status": "ok", "device": str(device), "torch_threads": torch.get_num_threads(),
              "baseline_bytes": meter.baseline}
    code = 0
    try:
        body = _sft_worker(spec, device, meter) if spec["variant"] == SFT else _ppo_worker(spec, device, meter)
        result.update(body)
    except (torch.OutOfMemoryError, MemoryError) as e:
        result.update(status="oom", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
        code = 3
    except RuntimeError as e:  # the CPU allocator's out-of-memory
        if "can't allocate memory" not in str(e):
            raise
        result.update(status="oom", error=str(e).splitlines()[0])
        code = 3
    result["peak_bytes"] = max(meter.peak(), meter.lifetime)
    if result["status"] == "ok":
        result["net_peak_bytes"] = result["peak_bytes"] - meter.baseline
        result["net_iteration_peak_bytes"] = result["iteration_peak_bytes"] - meter.baseline
        mem = result["memory"]
        result["state_bytes"] = mem["memory/param_bytes"] + mem["memory/grad_bytes"] + mem["memory/optimizer_bytes"]
    result_path.write_text(json.dumps(result, indent=2))
    return code


# =========================================================================================
# parent: models, runs, search, report
# =========================================================================================

def ensure_models(cache: Path, size: str) -> tuple[Path, Path]:
    """A random-init base model and a Hydra-SFT directory (backbone + reward head) for `size`."""
    base, hydra = cache / size / "base", cache / size / "hydra-sft"
    if not (base / "config.json").exists() or not (hydra / "hydra_config.json").exists():
        code = ("import sys; from hydra_core.config import ModelInitConfig; "
                "from hydra_core.models.presets import build_base_model; "
                "from hydra_core.models.hydra import load_hydra; import torch; "
                "b = build_base_model(ModelInitConfig(output_dir=sys.argv[2], preset=sys.argv[1])); "
                "load_hydra(str(b), heads=('reward',), dtype=torch.float32).save(sys.argv[3], kind='hydra-sft', "
                "note='random init, for the benchmark')")
        print(f"building {size} models in {cache / size} ...", flush=True)
        subprocess.run([sys.executable, "-c", code, size, str(base), str(hydra)], check=True, cwd=REPO)
    return base, hydra


def run_worker(spec: dict, timeout: float, watch_bytes: int | None = None) -> dict:
    """Run one measurement in a fresh process. `watch_bytes`: kill it if its RSS passes this (CPU)."""
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        log_path = Path(tmp) / "log.txt"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--result", str(result_path)]
        env = {**os.environ, **(TIGHT_MALLOC if spec.get("tight_malloc") else {})}
        started = time.perf_counter()
        with log_path.open("w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
            killed, timed_out, watch = None, False, psutil.Process(proc.pid) if watch_bytes else None
            while proc.poll() is None:
                elapsed = time.perf_counter() - started
                if elapsed > timeout:
                    killed, timed_out = f"timed out after {timeout:.0f}s (--timeout)", True
                elif watch is not None:
                    try:
                        rss = watch.memory_info().rss
                    except psutil.Error:
                        rss = 0
                    if rss > watch_bytes:
                        killed = f"RSS {rss / MiB:.0f} MiB passed the budget {watch_bytes / MiB:.0f} MiB"
                if killed:
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(0.05)
        wall = time.perf_counter() - started
        log_tail = log_path.read_text()[-3000:]
        if result_path.exists():
            result = json.loads(result_path.read_text())
        else:
            status = ("timeout" if timed_out else
                      "killed" if killed or proc.returncode < 0 or proc.returncode == 137 else "error")
            result = {"status": status, "returncode": proc.returncode, "error": killed or log_tail.strip()[-1500:]}
    result.update({k: spec[k] for k in ("size", "variant", "batch")}, wall_s=wall)
    if result["status"] != "ok":
        print(f"  {spec['size']} {spec['variant']} b={spec['batch']}: {result['status']}: "
              f"{str(result.get('error', ''))[-500:]}", flush=True)
    return result


def _spec(args, size: str, variant: str, batch: int, dirs, memory_limit=None) -> dict:
    base, hydra = dirs
    return {"size": size, "variant": variant, "batch": batch, "mini_batch": args.mini_batch_size,
            "prompt_length": args.prompt_length, "new_tokens": args.new_tokens,
            "steps": args.warmup + args.iterations, "warmup": args.warmup, "ppo_epochs": args.ppo_epochs,
            "lora_rank": args.lora_rank, "seed": args.seed, "device": args.device, "threads": args.threads,
            "base_dir": str(base), "model_dir": str(hydra), "memory_limit": memory_limit,
            "tight_malloc": args.tight_malloc, "timing_stat": args.timing_stat}


def _describe(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}"
    return (f"peak {r['peak_bytes'] / MiB:.0f} MiB (net {r['net_peak_bytes'] / MiB:.0f}), "
            f"{1000 * r['s_per_sample']:.1f} ms/sample, {r['wall_s']:.0f}s wall")


def fits(result: dict, budget: int) -> bool:
    return result["status"] == "ok" and result["peak_bytes"] <= budget


def search_batch(args, size: str, variant: str, dirs, budget: int, cuda: bool) -> dict:
    """The largest batch (<= --max-batch) whose run fits `budget`: doubling, then bisection."""
    probes: dict[int, dict] = {}

    def probe(batch: int) -> bool:
        spec = _spec(args, size, variant, batch, dirs, memory_limit=budget if cuda else None)
        probes[batch] = run_worker(spec, args.timeout, watch_bytes=None if cuda else budget)
        ok = fits(probes[batch], budget)
        print(f"  probe {size} {variant} batch {batch}: {'fits' if ok else 'does not fit'} "
              f"({_describe(probes[batch])})", flush=True)
        return ok

    lo, hi, batch = 0, None, min(args.min_batch, args.max_batch)
    while True:  # doubling up to the cap
        if not probe(batch):
            hi = batch
            break
        lo = batch
        if batch >= args.max_batch:
            break
        batch = min(2 * batch, args.max_batch)
    while hi is not None and hi - lo > max(1, int(lo * args.bisect_tolerance)):  # bisection
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    best = probes.get(lo)
    return {"size": size, "variant": variant, "budget_bytes": budget, "max_batch": lo or None,
            "capped": hi is None, "s_per_sample": best["s_per_sample"] if best else None,
            "tokens_per_s": best["tokens_per_s"] if best else None,
            "peak_bytes": best["peak_bytes"] if best else None,
            "probes": [{k: p.get(k) for k in ("batch", "status", "peak_bytes", "s_per_sample", "wall_s", "error")}
                       for _, p in sorted(probes.items())]}


# --- report --------------------------------------------------------------------------------

def table(runs: list[dict], cuda: bool) -> str:
    head = ["size", "variant", "batch", "peak MiB", "net MiB" if not cuda else "", "params M", "train M",
            "param MiB", "grad MiB", "optim MiB", "s/sample", "tok/s", "gen s", "score s", "train s"]
    rows = []
    for r in runs:
        if r["status"] != "ok":
            rows.append([r["size"], r["variant"], str(r["batch"]), r["status"]] + [""] * (len(head) - 4))
            continue
        m, ph = r["memory"], r["phases_s"]
        rows.append([r["size"], r["variant"], str(r["batch"]), _mib(r["peak_bytes"]),
                     _mib(r["net_peak_bytes"]) if not cuda else "",
                     f"{m['memory/params'] / 1e6:.2f}", f"{m['memory/trainable_params'] / 1e6:.3f}",
                     _mib(m["memory/param_bytes"]), _mib(m["memory/grad_bytes"]), _mib(m["memory/optimizer_bytes"]),
                     f"{r['s_per_sample']:.4f}", f"{r['tokens_per_s']:,.0f}",
                     _num(ph.get("generation"), "{:.3f}"), _num(ph.get("scoring"), "{:.3f}"),
                     _num(ph.get("training"), "{:.3f}")])
    keep = [i for i, h in enumerate(head) if h]
    head, rows = [head[i] for i in keep], [[row[i] for i in keep] for row in rows]
    widths = [max(len(head[i]), *(len(row[i]) for row in rows)) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.rjust(w) if j > 1 else c.ljust(w)  # noqa: E731
                                           for j, (c, w) in enumerate(zip(cells, widths))) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def targets(runs: list[dict], budget: list[dict], cuda: bool) -> list[dict]:
    """The issue's three targets, each with its measured numbers. Reported, not asserted."""
    by = {(r["size"], r["variant"]): r for r in runs if r["status"] == "ok"}
    sizes = list(dict.fromkeys(r["size"] for r in runs))
    kinds = [("peak_bytes", "peak")] + ([] if cuda else [("net_peak_bytes", "net (baseline-subtracted) peak")])
    out = []
    for size in sizes:
        hydra, sft, full = by.get((size, "hydra")), by.get((size, SFT)), by.get((size, "full"))
        for key, label in kinds:
            if hydra and sft:
                out.append({"target": "Hydra-PPO peak <= full-fine-tune SFT peak (same model and batch)",
                            "size": size, "measure": label, "hydra": hydra[key], "sft": sft[key],
                            "ratio": hydra[key] / sft[key], "verdict": _verdict(hydra[key] <= sft[key]),
                            "headline": size == "llama-120m"})
        for key, label in kinds:
            if hydra and full:
                out.append({"target": "Hydra-PPO peak <= 0.5 x full-PPO peak", "size": size, "measure": label,
                            "hydra": hydra[key], "full": full[key], "ratio": hydra[key] / full[key],
                            "verdict": _verdict(hydra[key] <= 0.5 * full[key]), "headline": True})
    found = {(b["size"], b["variant"]): b for b in budget}
    for size in dict.fromkeys(b["size"] for b in budget):
        hydra, lora = found.get((size, "hydra")), found.get((size, "lora"))
        if hydra and lora and hydra["s_per_sample"] and lora["s_per_sample"]:
            ratio = hydra["s_per_sample"] / lora["s_per_sample"]
            out.append({"target": "under one memory budget, Hydra-PPO s/sample <= 0.35 x LoRA-PPO s/sample",
                        "size": size, "measure": f"budget {hydra['budget_bytes'] / MiB:.0f} MiB",
                        "hydra": hydra["s_per_sample"], "lora": lora["s_per_sample"],
                        "hydra_batch": hydra["max_batch"], "lora_batch": lora["max_batch"], "ratio": ratio,
                        "verdict": _verdict(ratio <= 0.35), "headline": True})
    return out


def describe_target(t: dict) -> str:
    if "lora" in t:
        nums = (f"hydra {t['hydra']:.4f} s/sample at batch {t['hydra_batch']} vs lora {t['lora']:.4f} "
                f"at batch {t['lora_batch']}")
    else:
        other = "sft" if "sft" in t else "full"
        nums = f"hydra {t['hydra'] / MiB:,.1f} MiB vs {other} {t[other] / MiB:,.1f} MiB"
    note = "" if t.get("headline", True) else "  (indicative: the target is stated at ~120M)"
    return f"[{t['verdict']}] {t['target']} | {t['size']}, {t['measure']}: {nums} (ratio {t['ratio']:.2f}){note}"


def _budget_panel(ax, size: str, budget: list[dict], colors: dict) -> None:
    found = [b for b in budget if b["size"] == size and b["max_batch"]]
    names = [b["variant"] for b in found]
    ax.bar(range(len(found)), [b["s_per_sample"] * 1000 for b in found], color=[colors[v] for v in names])
    for i, b in enumerate(found):
        ax.annotate(f"b={b['max_batch']}", (i, b["s_per_sample"] * 1000), ha="center", va="bottom", fontsize=7)
    label = f"{budget[0]['budget_bytes'] / 2**30:.2f} GiB"
    ax.set_title(f"{size}: ms/sample at the largest batch in {label}", fontsize=9)
    ax.set_xticks(range(len(found)), names, fontsize=7, rotation=20)
    ax.grid(axis="y", alpha=0.3)


def chart(runs: list[dict], budget: list[dict], path: Path, cuda: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys([r["size"] for r in runs] + [b["size"] for b in budget]))
    nrows = (2 if runs else 0) + (1 if budget else 0)
    fig, axes = plt.subplots(nrows, len(sizes), figsize=(4.6 * len(sizes), 3.4 * nrows), squeeze=False)
    colors = {"full": "#b2182b", "lora": "#ef8a62", "lora-dynamic": "#fddbc7", "j-hydra": "#67a9cf",
              "hydra": "#2166ac", SFT: "#4d4d4d"}
    for col, size in enumerate(sizes):
        if budget:
            _budget_panel(axes[-1][col], size, budget, colors)
        if not runs:
            continue
        mine = {r["variant"]: r for r in runs if r["size"] == size and r["status"] == "ok"}
        ppo = [v for v in PPO_VARIANTS if v in mine]
        x = range(len(ppo))
        ax = axes[0][col]
        ax.bar(x, [mine[v]["peak_bytes"] / MiB for v in ppo], color=[colors[v] for v in ppo])
        if not cuda:  # the runtime baseline inside every CPU peak
            ax.bar(x, [mine[v]["baseline_bytes"] / MiB for v in ppo], color="none", hatch="//", edgecolor="grey",
                   linewidth=0, label="runtime baseline (RSS after imports)")
        if SFT in mine:
            ax.axhline(mine[SFT]["peak_bytes"] / MiB, color="black", linestyle="--", label="full-fine-tune SFT")
        batch = next(iter(mine.values()))["batch"] if mine else "?"
        ax.set_title(f"{size}: peak memory (batch {batch})", fontsize=9)
        ax.set_ylabel("MiB" + ("" if cuda else " (peak RSS)"), fontsize=8)
        ax.set_xticks(list(x), ppo, fontsize=7, rotation=20)
        ax.legend(fontsize=6, loc="upper right")
        ax.grid(axis="y", alpha=0.3)

        ax = axes[1][col]
        ax.bar(x, [mine[v]["s_per_sample"] * 1000 for v in ppo], color=[colors[v] for v in ppo])
        if SFT in mine:
            ax.axhline(mine[SFT]["s_per_sample"] * 1000, color="black", linestyle="--", label="SFT step")
            ax.legend(fontsize=6)
        ax.set_title(f"{size}: ms per sample (PPO iteration)", fontsize=9)
        ax.set_xticks(list(x), ppo, fontsize=7, rotation=20)
        ax.grid(axis="y", alpha=0.3)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- entry ---------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_csv(SIZES), default=list(SIZES), help="comma-separated presets")
    p.add_argument("--variants", type=_csv(ALL_RUNS), default=list(ALL_RUNS),
                   help="comma-separated runs among sft and the five PPO variants (default: all)")
    p.add_argument("--batch", type=int, default=8, help="prompts per PPO iteration = SFT batch")
    p.add_argument("--mini-batch-size", type=int, default=0, help="PPO mini-batch (default: the batch)")
    p.add_argument("--prompt-length", type=int, default=32, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=16, help="generated tokens per response (always reached)")
    p.add_argument("--iterations", type=int, default=2, help="measured iterations after the warm-up")
    p.add_argument("--warmup", type=int, default=1, help="iterations run first and left out of the timings")
    p.add_argument("--timing-stat", choices=("mean", "median", "min"), default="mean",
                   help="how the measured iterations' timings combine (median/min resist a busy machine)")
    p.add_argument("--ppo-epochs", type=int, default=1, help="PPO epochs per iteration (the paper: 1)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="", help="'' = CUDA when available, else CPU")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (0 = torch default)")
    p.add_argument("--tight-malloc", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: glibc malloc settings that make RSS follow live memory (default: on)")
    p.add_argument("--memory-budget", type=parse_bytes, default=None,
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
    return args


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
    for size in args.sizes:
        dirs = ensure_models(args.cache_dir, size)
        if not args.budget_only:
            for variant in args.variants:
                print(f"{size} {variant} batch {args.batch} ...", flush=True)
                result = run_worker(_spec(args, size, variant, args.batch, dirs), args.timeout)
                print(f"  -> {_describe(result)}", flush=True)
                runs.append(result)
        if args.memory_budget:
            for variant in args.variants:
                print(f"{size} {variant}: largest batch within {args.memory_budget / MiB:.0f} MiB ...", flush=True)
                found.append(search_batch(args, size, variant, dirs, args.memory_budget, cuda))
                b = found[-1]
                print(f"  -> batch {b['max_batch']}{' (the cap)' if b['capped'] else ''}, "
                      f"{_num(b['s_per_sample'], '{:.4f}')} s/sample", flush=True)

    device = next((r["device"] for r in runs + [p for b in found for p in b["probes"]] if r.get("device")), None)
    baseline = [r["baseline_bytes"] for r in runs if r["status"] == "ok"]
    notes = []
    if not cuda:
        notes.append("CPU: 'peak' is the process peak RSS, which includes the Python/torch runtime "
                     f"(RSS right after imports, ~{(sum(baseline) / len(baseline) if baseline else 0) / MiB:.0f} MiB "
                     "here); 'net' subtracts that baseline, leaving model + optimizer + activations + allocator slack"
                     + (" (glibc malloc set to return freed memory: --tight-malloc)." if args.tight_malloc else "."))
        notes.append(f"CPU timings are only as steady as the machine: {os.cpu_count()} cores, load average "
                     f"{load_before[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end of this run.")
    notes.append("grad MiB: the gradients present at the optimizer step; optim MiB: AdamW state after the last step.")
    if not cuda:
        notes.append("JSON phase_peaks_bytes on CPU are cumulative within an iteration (hydra_core.memory.reset_peak "
                     "does not reset the RSS mark on CPU); iteration peaks are reset per iteration by this script.")
    notes.append("s/sample: one whole PPO iteration (rollout + scoring + optimise) / batch; SFT: one step / batch; "
                 f"the {args.timing_stat} over {args.iterations} iteration(s) after {args.warmup} warm-up.")
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if k not in ("worker", "result")},
        "device": device,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "notes": notes,
        "runs": runs,
        "budget": found,
        "wall_s": time.perf_counter() - started,
    }
    report["targets"] = targets(runs, found, cuda)
    (args.out / "ppo_variants.json").write_text(json.dumps(report, indent=2))
    chart(runs, found, args.out / "ppo_variants.png", cuda) if runs or found else None

    print()
    if runs:
        print(table(runs, cuda))
    if found:
        print(f"\nlargest batch within {args.memory_budget / MiB:,.0f} MiB:")
        for b in found:
            print(f"  {b['size']:>10} {b['variant']:>12}: batch {b['max_batch']}{'+ (cap)' if b['capped'] else ''}, "
                  f"{_num(b['s_per_sample'], '{:.4f}')} s/sample, peak {_mib(b['peak_bytes'])} MiB")
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
