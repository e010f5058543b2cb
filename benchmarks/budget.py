"""The memory-budget search: per variant, the largest batch whose run fits a peak budget.

The search and the process runner are `hydra_core.ppo.budget`'s, the ones `hydra-rlhf ppo
--memory-budget` uses: doubling from --min-batch, then bisection, each probe a fresh worker process
(`measure.run_worker`). A probe that runs out of memory, is killed (on CPU the parent kills a worker
whose RSS passes the budget; on CUDA the worker caps itself with
`torch.cuda.set_per_process_memory_fraction`) or peaks over the budget does not fit.
"""

from __future__ import annotations

from measure import describe_run, run_worker, worker_spec

from hydra_core.ppo.budget import search_largest, verdict  # the one search, shared with hydra-rlhf ppo


def search_batch(args, size: str, variant: str, dirs, budget: int, cuda: bool) -> dict:
    """The largest batch in [--min-batch, --max-batch] whose run fits `budget`."""
    probes: dict[int, dict] = {}

    def probe(batch: int) -> bool:
        spec = worker_spec(args, size, variant, batch, dirs, memory_limit=budget if cuda else None)
        probes[batch] = run_worker(spec, args.timeout, watch_bytes=None if cuda else budget)
        ok = verdict(probes[batch], budget) == "fits"
        print(f"  probe {size} {variant} batch {batch}: {'fits' if ok else 'does not fit'} "
              f"({describe_run(probes[batch])})", flush=True)
        return ok

    start = min(args.min_batch, args.max_batch)  # the search never goes below where it starts
    found, capped = search_largest(probe, start=start, cap=args.max_batch, floor=start,
                                   tolerance=args.bisect_tolerance)
    best = probes.get(found)
    return {"size": size, "variant": variant, "budget_bytes": budget, "max_batch": found or None,
            "capped": capped, "s_per_sample": best["s_per_sample"] if best else None,
            "tokens_per_s": best["tokens_per_s"] if best else None,
            "peak_bytes": best["peak_bytes"] if best else None,
            "probes": [{k: p.get(k) for k in ("batch", "status", "peak_bytes", "s_per_sample", "wall_s", "error")}
                       for _, p in sorted(probes.items())]}
