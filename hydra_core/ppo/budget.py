"""The memory budget (`hydra-rlhf ppo --memory-budget`): the largest rollout batch whose peak memory fits,
found by short probes before anything is loaded. This is the paper's latency lever: memory a layout
saves buys a larger batch, and a larger batch fewer seconds per sample.

A probe is one RL iteration on the worst case (the batch's longest prompts, every response run to
`max_new_tokens`) in a FRESH process: on CPU the peak is the process's peak RSS, which an earlier
probe in the same process would already have raised. On CPU the parent kills a probe whose RSS passes
the budget; on CUDA the probe caps itself at the budget (`torch.cuda.set_per_process_memory_fraction`)
and its peak is `torch.cuda.max_memory_allocated`. A probe that runs out of memory, is killed or peaks
over the budget does not fit; one that fails otherwise is a real error and stops the search.

The generic parts, `search_largest` (doubling or halving, then bisection), `run_watched` (one process,
killed when its RSS passes a mark) and `full_length_stack` (the models with every response forced to
full length), are also the benchmark's budget mode (benchmarks/budget.py, benchmarks/measure.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping

from hydra_core.config.fields import to_dict
from hydra_core.config.settings import PPOConfig, parse_bytes

BUDGET_FILE = "ppo_budget.json"
# a probe costs a whole iteration, and a batch within 10% of the best one is as fast per sample
BISECT_TOLERANCE = 0.1
MiB = 2**20
_POLL_S = 0.05
_LOG_TAIL = 3000


# --- the search -----------------------------------------------------------------------------------

def search_largest(fits: Callable[[int], bool], start: int, cap: int, floor: int = 1,
                   tolerance: float = 0.0) -> tuple[int, bool]:
    """The largest batch in [floor, cap] for which `fits` holds, assuming a batch that fits has every smaller
    one fit: from `start`, doubling while it fits (up to `cap`) or halving while it does not (down to
    `floor`), then bisecting until the gap is at most max(1, tolerance x the batch). Returns (the batch, or 0
    when not even `floor` fits; whether it is `cap`, so a larger one might have fit too). Every batch is
    tried once."""
    floor = min(max(1, floor), cap)
    batch = min(max(start, floor), cap)
    lo, hi = 0, None  # the largest batch seen to fit, the smallest seen not to
    if fits(batch):
        lo = batch
        while lo < cap and hi is None:
            batch = min(2 * lo, cap)
            lo, hi = (batch, None) if fits(batch) else (lo, batch)
    else:
        hi = batch
        while hi > floor and not lo:
            batch = max(hi // 2, floor)
            lo, hi = (batch, hi) if fits(batch) else (0, batch)
        if not lo:
            return 0, False
    while hi is not None and hi - lo > max(1, int(lo * tolerance)):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi is None


def verdict(result: dict, budget: int) -> str:
    """A probe's status: `fits`, `over` (it ran through and peaked above the budget), or the reason it did
    not run through (`oom`, `killed`, `timeout`, `error`)."""
    if result["status"] != "ok":
        return result["status"]
    return "fits" if result["peak_bytes"] <= budget else "over"


# --- one process, watched -------------------------------------------------------------------------

def _rss(watch) -> int:
    import psutil

    try:
        return watch.memory_info().rss
    except psutil.Error:  # it has just exited
        return 0


def run_watched(cmd: list[str], result_path: Path, *, env: Mapping[str, str] | None = None,
                cwd: str | Path | None = None, timeout: float | None = None,
                watch_bytes: int | None = None) -> dict:
    """Run `cmd`, a process that writes its result as JSON to `result_path`; return that result plus `wall_s`.
    The process is killed when it runs past `timeout` seconds or, with `watch_bytes`, when its RSS passes
    them (on CPU nothing else would stop it before the machine's own limit); then, or when it wrote no
    result, the result is {"status": "timeout" | "killed" | "error", "returncode", "error": why, or the
    tail of its output}. With `watch_bytes` the result also has `watched_peak_bytes`, the largest RSS seen."""
    import psutil

    log_path = result_path.with_name(result_path.stem + ".log")
    started = time.perf_counter()
    killed, timed_out, seen = None, False, 0
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        watch = psutil.Process(proc.pid) if watch_bytes else None
        while proc.poll() is None:
            if timeout is not None and time.perf_counter() - started > timeout:
                killed, timed_out = f"timed out after {timeout:.0f}s", True
            elif watch is not None:
                seen = max(seen, _rss(watch))
                if seen > watch_bytes:
                    killed = f"RSS {seen / MiB:.0f} MiB passed the budget {watch_bytes / MiB:.0f} MiB"
            if killed:
                proc.kill()
                proc.wait()
                break
            time.sleep(_POLL_S)
    wall = time.perf_counter() - started
    if result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        status = ("timeout" if timed_out else
                  "killed" if killed or proc.returncode < 0 or proc.returncode == 137 else "error")
        tail = log_path.read_text()[-_LOG_TAIL:].strip()
        result = {"status": status, "returncode": proc.returncode, "error": killed or tail[-_LOG_TAIL // 2:]}
    if watch_bytes:
        result["watched_peak_bytes"] = seen
    result["wall_s"] = wall
    return result


# --- in a probe process ---------------------------------------------------------------------------

def limit_cuda_memory(device, limit_bytes: int | None) -> None:
    """Cap this process's CUDA allocations at `limit_bytes` (an allocation past it is an OOM); no-op on CPU."""
    import torch

    if device.type == "cuda" and limit_bytes:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total), device)


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the device running out of memory (CUDA's OOM, or the CPU allocator's)."""
    import torch

    return (isinstance(error, (torch.OutOfMemoryError, MemoryError))
            or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error)))


def full_length_stack(cfg: PPOConfig, device):
    """The run's models, optimizer and schedule, with every response forced to `max_new_tokens` (no EOS
    before the cap): the most work, and the most memory, an iteration can take."""
    from hydra_core.ppo.roles import PolicyStack
    from hydra_core.ppo.iteration import build_optimizer

    stack = PolicyStack(cfg, device)
    for model in stack.unique_modules():
        model.base_model.generation_config.min_new_tokens = cfg.max_new_tokens
    optimizer, scheduler = build_optimizer(cfg, stack)
    return stack, optimizer, scheduler


def longest_prompts(cfg: PPOConfig, tokenizer, batch: int) -> list:
    """The `batch` longest prompts of the data's prompts_train split by token count (cycled when there are
    fewer): the largest rollout a batch of this size can be."""
    from hydra_core.data.encoding import prompt_ids
    from hydra_core.data.splits import load_split

    prompts = load_split(cfg.data, "prompts_train")
    lengths = [len(prompt_ids(tokenizer, p.prompt)) for p in prompts]
    ranked = [p for _, p in sorted(zip(lengths, prompts), key=lambda pair: -pair[0])]
    return [ranked[i % len(ranked)] for i in range(batch)]


def probe(spec_path: Path, result_path: Path) -> int:
    """The probe process: one iteration of the spec's config on the worst case; writes its peak as JSON."""
    from hydra_core.memory import peak_bytes
    from hydra_core.ppo.iteration import ppo_iteration
    from hydra_core.ppo.rollouts import make_rollouts
    from hydra_core.runtime import keep_freed_memory, pick_device, seed_everything

    spec = json.loads(spec_path.read_text())
    cfg = PPOConfig(**spec["config"])
    device = pick_device(cfg.device or None)
    limit_cuda_memory(device, spec["budget_bytes"])
    if device.type == "cpu":
        keep_freed_memory()  # as run_ppo: the heap keeps what it freed, so the run's RSS mark is this high too
    result: dict = {"status": "ok", "device": str(device)}
    peak = 0
    try:
        seed_everything(cfg.seed)
        stack, optimizer, scheduler = full_length_stack(cfg, device)
        prompts = longest_prompts(cfg, stack.policy_model.tokenizer, cfg.rollout_batch_size)
        # the run's rollout engine, its memory counted in the probe's (with vLLM: the engine's weights and a KV
        # cache for this batch), every response forced to full length there too
        rollouts = make_rollouts(cfg, stack, full_length=True)
        peak = peak_bytes(device)  # loading; the iteration resets the peak per phase and reports their largest
        metrics = ppo_iteration(cfg, stack, prompts, optimizer, scheduler, step=1, last_checkpoint=None,
                                rollouts=rollouts)
        peak = max(peak, metrics["memory/peak_bytes"])
    except Exception as e:  # noqa: BLE001 - an OOM is a measurement; anything else propagates below
        if not out_of_memory(e):
            raise
        result.update(status="oom", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
    result["peak_bytes"] = max(peak, peak_bytes(device))
    result_path.write_text(json.dumps(result))
    return 0


# --- in the parent: the probes and the choice -----------------------------------------------------

def _probe_env() -> dict[str, str]:
    """This environment, with this copy of hydra_core first on the path (the probe may run from anywhere)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


def measure_batch(cfg: PPOConfig, batch: int, budget: int, cuda: bool) -> dict:
    """One probe of `cfg` at rollout batch `batch`: {"batch", "status" (see `verdict`), "peak_bytes",
    "seconds"}, and "error" where it did not run through."""
    with tempfile.TemporaryDirectory(prefix="hydra-budget-") as tmp:
        spec_path, result_path = Path(tmp) / "probe.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({"config": to_dict(replace(cfg, rollout_batch_size=batch)),
                                         "budget_bytes": budget}))
        # cwd stays this process's: the config's relative paths are relative to it
        result = run_watched([sys.executable, "-m", "hydra_core.ppo.budget", str(spec_path), str(result_path)],
                             result_path, env=_probe_env(), watch_bytes=None if cuda else budget)
    peak = max(result.get("peak_bytes") or 0, result.get("watched_peak_bytes") or 0)
    record = {"batch": batch, "status": verdict({**result, "peak_bytes": peak}, budget), "peak_bytes": peak,
              "seconds": round(result["wall_s"], 2)}
    if "error" in result:
        record["error"] = result["error"]
    return record


def _recorded(path: Path, budget: int) -> dict | None:
    """The earlier search in `path` when it was for this budget and found a batch."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("budget_bytes") == budget and record.get("rollout_batch_size") else None


def _nothing_fits(cfg: PPOConfig, one: dict) -> str:
    measured = "RSS" if one["status"] == "killed" else "peak"
    return (f"--memory-budget {cfg.memory_budget}: not even a rollout batch of 1 fits (its probe: {one['status']}, "
            f"{measured} {one['peak_bytes'] / MiB:.0f} MiB over the {parse_bytes(cfg.memory_budget) / MiB:.0f} MiB "
            "budget); raise the budget or lower --max-new-tokens or --max-prompt-length")


def fit_rollout_batch(cfg: PPOConfig, out_dir: Path, progress: bool = True) -> tuple[PPOConfig, dict]:
    """`cfg` with the largest `rollout_batch_size` whose probe fits `cfg.memory_budget`, searched from
    `cfg.rollout_batch_size` up to the number of training prompts, and the search's record (also written
    to `out_dir/ppo_budget.json`). A resumed run takes the recorded choice for the same budget unprobed,
    so it trains with the batch its checkpoints were made with. A ValueError when not even 1 fits; a
    RuntimeError with the probe's output when a probe fails for any reason but memory."""
    from hydra_core.data.splits import load_split
    from hydra_core.runtime import pick_device

    budget = parse_bytes(cfg.memory_budget)
    path = Path(out_dir) / BUDGET_FILE
    say = print if progress else (lambda *_, **__: None)
    if cfg.resume and (record := _recorded(path, budget)):
        say(f"memory budget {cfg.memory_budget}: rollout batch {record['rollout_batch_size']} as {path} recorded "
            "(a resumed run keeps its batch)", flush=True)
        return replace(cfg, rollout_batch_size=record["rollout_batch_size"]), {**record, "reused": True}

    cap = len(load_split(cfg.data, "prompts_train"))
    device = pick_device(cfg.device or None)
    cuda = device.type == "cuda"
    k = cfg.samples_per_prompt
    probes: list[dict] = []

    def fits(batch: int) -> bool:
        probes.append(measure_batch(cfg, batch, budget, cuda))
        p = probes[-1]
        say(f"memory budget {cfg.memory_budget}: rollout batch {batch} ({batch * k} responses): {p['status']}, "
            f"peak {p['peak_bytes'] / MiB:.0f} MiB, {p['seconds']:.1f}s", flush=True)
        if p["status"] == "error":
            raise RuntimeError(f"the memory-budget probe of rollout batch {batch} failed; its last output:\n"
                               f"{p.get('error', '')}")
        return p["status"] == "fits"

    started = time.perf_counter()
    best, capped = search_largest(fits, start=cfg.rollout_batch_size, cap=cap, floor=1, tolerance=BISECT_TOLERANCE)
    record = {"memory_budget": cfg.memory_budget, "budget_bytes": budget, "device": str(device),
              "peak_measure": "torch.cuda.max_memory_allocated" if cuda else "process peak RSS",
              "start": cfg.rollout_batch_size, "cap": cap, "rollout_batch_size": best or None,
              "samples_per_prompt": k, "responses": best * k or None, "capped": capped,
              "seconds": round(time.perf_counter() - started, 2), "probes": probes}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    if not best:
        raise ValueError(_nothing_fits(cfg, next(p for p in probes if p["batch"] == 1)))
    say(f"memory budget {cfg.memory_budget}: training with rollout batch {best}"
        + (f" (all {cap} training prompts)" if capped else ""), flush=True)
    return replace(cfg, rollout_batch_size=best), record


if __name__ == "__main__":
    sys.exit(probe(Path(sys.argv[1]), Path(sys.argv[2])))
