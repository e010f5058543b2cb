import subprocess
import sys
import textwrap

import pytest
import torch

from hydra_core import runtime


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_auto_precision_on_cpu_follows_native_bf16_support(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime.mixed_precision("auto", torch.device("cpu")) == expected
    assert runtime.mixed_precision("no", torch.device("cpu")) == "no"
    assert runtime.mixed_precision("bf16", torch.device("cpu")) == "bf16"


# A training step's pattern: six 8 MiB activations alive at once, then all freed; 20 times.
# Prints the page faults the 20 steps cost.
_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from hydra_core.runtime import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def step():
        activations = [torch.ones(2 << 20) for _ in range(6)]
        return sum(a.sum() for a in activations)
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_kept_memory_is_reused_instead_of_faulted_back_in():
    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        return int(run.stdout.strip())

    default, kept = faults("default"), faults("keep")
    pages = 20 * 6 * (8 << 20) // 4096
    assert default > pages / 2  # glibc hands the activations back and faults them in again
    assert kept < default / 10
