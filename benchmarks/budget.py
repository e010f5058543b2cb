"""The memory-budget search: per variant, the largest batch whose run fits a peak budget.

Doubling, then bisection, each probe a fresh worker process (`measure.run_worker`). A probe that
runs out of memory, is killed (on CPU the parent kills a worker whose RSS passes the budget; on
CUDA the worker caps itself with `torch.cuda.set_per_process_memory_fraction`) or peaks over the
budget does not fit.
"""

from __future__ import annotations

from measure import describe_run, run_worker, worker_spec


def fits(result: dict, budget: int) -> bool:
    return result["status"] == "ok" and result["peak_bytes"] <= budget


def search_batch(args, size: str, variant: str, dirs, budget: int, cuda: bool) -> dict:
    """The largest batch (<= --max-batch) whose run fits `budget`: doubling, then bisection."""
    probes: dict[int, dict] = {}

    def probe(batch: int) -> bool:
        spec = worker_spec(args, size, variant, batch, dirs, memory_limit=budget if cuda else None)
        probes[batch] = run_worker(spec, args.timeout, watch_bytes=None if cuda else budget)
        ok = fits(probes[batch], budget)
        print(f"  probe {size} {variant} batch {batch}: {'fits' if ok else 'does not fit'} "
              f"({describe_run(probes[batch])})", flush=True)
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
