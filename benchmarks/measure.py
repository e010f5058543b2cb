"""The worker side of the benchmark: one measurement (a PPO variant or the SFT step) in a fresh process.

`run_worker` starts the entry script with `--worker` and reads back the JSON the worker writes
(`hydra_core.ppo.budget.run_watched`, the runner `hydra-rlhf ppo --memory-budget` probes with);
`worker` is what that process runs. A fresh process per measurement makes every peak that run's
own: the CPU figure is the process peak RSS, which nothing else in the process may have raised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SFT = "sft"
BANDWIDTH = "bandwidth"  # not a run: the device's streaming-read bandwidth, which sets the decode floor
PHASES = ("generation", "scoring", "old_policy", "training")
REPO = Path(__file__).resolve().parents[1]
# The worker is the entry script's `--worker` mode, so a probe's command line is the documented one.
ENTRY = Path(__file__).resolve().with_name("ppo_variants.py")
MiB = 2**20
# glibc: allocations over 128 KiB get their own mapping and freed memory goes back to the OS, so a
# CPU worker's RSS follows its live tensors (as max_memory_allocated does on CUDA) instead of the
# heap's high-water slack. Applied to every run alike; --no-tight-malloc turns it off.
TIGHT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
# The levers a run's name may add to its label after a "+" (`hydra+4bit`, `hydra+4bit+gc`, `hydra+vllm`): the PPO
# settings each one sets.
LEVERS = {"gc": {"gradient_checkpointing": True}, "8bit": {"quantize_backbone": "8bit"},
          "4bit": {"quantize_backbone": "4bit"}, "vllm": {"rollout_engine": "vllm"}}


def split_run(name: str) -> tuple[str, dict]:
    """A run's name as its run label (or sft) and the PPO settings of its levers: `hydra+4bit+gc` ->
    ('hydra', {'quantize_backbone': '4bit', 'gradient_checkpointing': True}); a KeyError for an unknown lever."""
    label, *levers = name.split("+")
    return label, {k: v for lever in levers for k, v in LEVERS[lever].items()}


# --- in the worker process ----------------------------------------------------------------

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

    from hydra_core.config.settings import PPOConfig, parse_run_label
    from hydra_core.memory import model_memory
    from hydra_core.ppo.budget import full_length_stack
    from hydra_core.ppo.iteration import ppo_iteration
    from hydra_core.ppo.rollouts import make_rollouts
    from hydra_core.runtime import seed_everything

    label, levers = split_run(spec["variant"])
    run = parse_run_label(label)
    # `batch` sampled responses per iteration whatever the algorithm: batch / k prompts, k responses each
    k = spec["samples_per_prompt"] if run["algorithm"] in ("rloo", "grpo") else 1
    prompts_per_batch = max(1, spec["batch"] // k)
    batch = prompts_per_batch * k
    cfg = PPOConfig(model=spec["model_dir"], data="", output_dir="", **run, samples_per_prompt=k,
                    steps=spec["steps"], rollout_batch_size=prompts_per_batch,
                    mini_batch_size=min(spec["mini_batch"] or batch, batch),
                    ppo_epochs=spec["ppo_epochs"], lora_rank=spec["lora_rank"], lora_alpha=2 * spec["lora_rank"],
                    max_new_tokens=spec["new_tokens"], max_prompt_length=spec["prompt_length"],
                    lr_schedule="constant", seed=spec["seed"], device=str(device),
                    mixed_precision=spec["mixed_precision"], **levers)
    seed_everything(cfg.seed)
    # Every response runs to the cap, so all variants do equal work; run_ppo's optimizer (the schedule is constant).
    stack, optimizer, scheduler = full_length_stack(cfg, device)
    rollouts = make_rollouts(cfg, stack, full_length=True)  # with vLLM its engine's load counts in the load peak
    grads = _grad_probe(optimizer)
    load_peak = meter.peak()

    rng = random.Random(cfg.seed)
    rows = []
    for step in range(1, cfg.steps + 1):
        prompts = _prompts(rng, prompts_per_batch, cfg.max_prompt_length)
        meter.reset()
        _sync(device)
        t0 = time.perf_counter()
        metrics = ppo_iteration(cfg, stack, prompts, optimizer, scheduler, step, None, rollouts=rollouts)
        _sync(device)
        wall = time.perf_counter() - t0  # the whole iteration, synchronised (phase times are the loop's own)
        tokens = metrics["time/tokens_per_s"] * metrics["time/step_s"]
        metrics.update({"time/iteration_s": wall, "time/s_per_sample": wall / batch,
                        "time/tokens_per_s": tokens / wall})
        # ppo_iteration resets the CUDA peak per phase: its own per-phase maximum covers the early phases
        metrics["iteration_peak_bytes"] = meter.note(max(meter.peak(), metrics["memory/peak_bytes"]))
        rows.append(metrics)
        print(f"  [{spec['size']} {spec['variant']} b={batch}] iteration {step}/{cfg.steps}: {wall:.2f}s, "
              f"peak {metrics['iteration_peak_bytes'] / MiB:.0f} MiB", file=sys.stderr)

    engine_bytes = rollouts.memory_bytes
    rollouts.close()
    trainable = list(stack.named_trainable().values())
    memory = model_memory(stack.unique_modules(), [optimizer], trainable=trainable)
    measured = rows[spec["warmup"]:] or rows
    summary = _summarise(measured, spec.get("timing_stat", "mean"))
    return {
        "load_peak_bytes": load_peak,
        "iteration_peak_bytes": max(r["iteration_peak_bytes"] for r in rows),
        "memory": {**memory, "memory/grad_bytes": grads["grad_bytes"]},
        "backbones": len(stack.unique_modules()),
        "rollout_engine": cfg.rollout_engine,
        "engine_bytes": engine_bytes,  # the engine's weights and KV cache, beside the trainer's models (0: hf)
        "logprob_gap": summary.get("rollout/logprob_gap"),
        "mixed_precision": stack.precision,
        "responses": batch,
        "samples_per_prompt": k,
        "s_per_sample": summary["time/s_per_sample"],
        "tokens_per_s": summary["time/tokens_per_s"],
        "step_s": summary["time/iteration_s"],
        "phases_s": {p: summary[f"time/{p}_s"] for p in PHASES},
        "phase_peaks_bytes": {p: max(r[f"memory/peak_{p}_bytes"] for r in rows) for p in PHASES},
        # what every decoding step reads: the actor's backbone (frozen weights, quantised ones with their scales,
        # and its adapters)
        "decode_weight_bytes": model_memory([stack.policy_model.backbone])["memory/param_bytes"],
        "generations": 2 if run["algorithm"] == "remax" else 1,  # ReMax decodes the greedy baseline too
        "new_tokens": cfg.max_new_tokens,
        "response_length": summary["val/response_length"],
        "eos_rate": summary["val/eos_rate"],
        "iterations": [{k: v for k, v in r.items() if k.startswith(("time/", "memory/", "iteration_"))}
                       for r in rows],
    }


def _sft_worker(spec: dict, device, meter: _Meter) -> dict:
    """One full fine-tune step of the whole model per iteration: the memory of plain SFT."""
    import torch

    from hydra_core.data.encoding import IGNORE_INDEX
    from hydra_core.memory import model_memory
    from hydra_core.models.hydra import load_hydra
    from hydra_core.runtime import mixed_precision, seed_everything
    from hydra_core.sft.metrics import lm_loss

    seed_everything(spec["seed"])
    # As `hydra_core.sft.trainer` does it: fp32 weights, bf16 autocast under --mixed-precision bf16, or auto where
    # the hardware does bf16 natively (the PPO runs take the same precision).
    model = load_hydra(spec["base_dir"], heads=(), device=device, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    grads = _grad_probe(optimizer)
    precision = mixed_precision(spec["mixed_precision"], device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
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
        "mixed_precision": precision,
        "s_per_sample": step_s / batch,
        "tokens_per_s": batch * (P + R) / step_s,
        "step_s": step_s,
        "phases_s": {"training": step_s},
        "iterations": [{"time/step_s": r["step_s"], "iteration_peak_bytes": r["peak"]} for r in rows],
    }


def _bandwidth_worker(spec: dict, device) -> dict:
    """The device's streaming-read bandwidth: the best of several full reads (a sum) of a buffer far larger
    than any cache. Decoding one token reads every weight once, so weight bytes x new tokens / this is the
    fastest any generation could be (the decode floor)."""
    import torch

    buffer = torch.ones(spec.get("bandwidth_bytes", 2**30) // 4, device=device)
    buffer.sum()  # first touch: page faults, not reads
    best = float("inf")
    for _ in range(7):
        _sync(device)
        t0 = time.perf_counter()
        buffer.sum()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"bandwidth_bytes_per_s": buffer.numel() * buffer.element_size() / best}


def worker(spec: dict, result_path: Path) -> int:
    """Measure one run and write its result JSON. Imports happen here, after the process starts."""
    import torch

    from hydra_core.ppo.budget import limit_cuda_memory, out_of_memory
    from hydra_core.runtime import keep_freed_memory, pick_device

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = pick_device(spec.get("device") or None)
    limit_cuda_memory(device, spec.get("memory_limit"))
    if device.type == "cpu" and not spec.get("tight_malloc"):
        keep_freed_memory()  # as run_sft and run_ppo do on CPU (--tight-malloc sets glibc's opposite)
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
        body = {SFT: _sft_worker, BANDWIDTH: lambda spec, device, _: _bandwidth_worker(spec, device)}.get(
            spec["variant"], _ppo_worker)(spec, device, meter)
        result.update(body)
    except Exception as e:  # noqa: BLE001 - an OOM is a measurement; anything else propagates
        if not out_of_memory(e):
            raise
        result.update(status="oom", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
        code = 3
    result["peak_bytes"] = max(meter.peak(), meter.lifetime)
    if result["status"] == "ok" and "memory" in result:  # a measured run (not the bandwidth reading)
        result["net_peak_bytes"] = result["peak_bytes"] - meter.baseline
        result["net_iteration_peak_bytes"] = result["iteration_peak_bytes"] - meter.baseline
        mem = result["memory"]
        result["state_bytes"] = mem["memory/param_bytes"] + mem["memory/grad_bytes"] + mem["memory/optimizer_bytes"]
    result_path.write_text(json.dumps(result, indent=2))
    return code


# --- in the parent: the models, a worker's spec, its process and its result ---------------

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
    from hydra_core.ppo.budget import run_watched

    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(ENTRY), "--worker", json.dumps(spec), "--result", str(result_path)]
        env = {**os.environ, **(TIGHT_MALLOC if spec.get("tight_malloc") else {})}
        result = run_watched(cmd, result_path, env=env, cwd=REPO, timeout=timeout, watch_bytes=watch_bytes)
    result.update({k: spec[k] for k in ("size", "variant", "batch")})
    if result["status"] != "ok":
        print(f"  {spec['size']} {spec['variant']} b={spec['batch']}: {result['status']}: "
              f"{str(result.get('error', ''))[-500:]}", flush=True)
    return result


def worker_spec(args, size: str, variant: str, batch: int, dirs, memory_limit=None) -> dict:
    """What one worker measures: the command line's settings for one size, variant and batch."""
    base, hydra = dirs
    return {"size": size, "variant": variant, "batch": batch, "mini_batch": args.mini_batch_size,
            "prompt_length": args.prompt_length, "new_tokens": args.new_tokens,
            "steps": args.warmup + args.iterations, "warmup": args.warmup, "ppo_epochs": args.ppo_epochs,
            "lora_rank": args.lora_rank, "samples_per_prompt": args.samples_per_prompt, "seed": args.seed,
            "device": args.device, "threads": args.threads,
            "base_dir": str(base), "model_dir": str(hydra), "memory_limit": memory_limit,
            "tight_malloc": args.tight_malloc, "timing_stat": args.timing_stat, "mixed_precision": args.mixed_precision}


def describe_run(r: dict) -> str:
    """A run's result in one line of progress output."""
    if r["status"] != "ok":
        return f"{r['status']}"
    return (f"peak {r['peak_bytes'] / MiB:.0f} MiB (net {r['net_peak_bytes'] / MiB:.0f}), "
            f"{1000 * r['s_per_sample']:.1f} ms/sample, {r['wall_s']:.0f}s wall")


