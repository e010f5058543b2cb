"""One table of a GPU check (`benchmarks/gpu_check.sh`): every `ppo_variants.json` (and
`ppo_processes.json`) under a folder, with the device named.

    python benchmarks/gpu_table.py outputs/benchmarks/gpu_check
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # see ppo_variants.py

from report import describe_target, fmt_mib, fmt_num, table  # noqa: E402


def device_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "CPU"
    props = torch.cuda.get_device_properties(0)
    return (f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB), "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}")


def render(folder: Path) -> str:
    reports = [json.loads(p.read_text()) for p in sorted(folder.glob("*/ppo_variants.json"))]
    if not reports:
        raise SystemExit(f"{folder}: no */ppo_variants.json here (run benchmarks/gpu_check.sh first)")
    cuda = any((r.get("device") or "").startswith("cuda") for r in reports)
    lines = [f"device: {device_name()}", ""]
    runs = [run for r in reports for run in r["runs"]]
    if runs:
        c = reports[0]["config"]
        lines += [f"fixed batch (prompt {c['prompt_length']} tokens, {c['new_tokens']} new, "
                  f"{c['timing_stat']} of {c['iterations']} iterations after {c['warmup']} warm-up):", "",
                  table(runs, cuda), ""]
    found = [b for r in reports for b in r["budget"]]
    if found:
        lines += ["| size | variant | budget MiB | largest batch | s/sample there | peak MiB |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {b['size']} | {b['variant']} | {fmt_mib(b['budget_bytes'])} | "
                  f"{b['max_batch']}{'+ (the cap)' if b['capped'] else ''} | "
                  f"{fmt_num(b['s_per_sample'], '{:.4f}')} | {fmt_mib(b['peak_bytes'])} |" for b in found]
        lines.append("")
    processes = folder / "ddp" / "ppo_processes.json"
    if processes.exists():
        lines += [json.loads(processes.read_text())["table"], ""]
    targets = [t for r in reports for t in r.get("targets", [])]
    if targets:
        lines += ["targets (reported, not asserted):", *("  " + describe_target(t) for t in targets)]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: gpu_table.py FOLDER")
    print(render(Path(sys.argv[1])))
