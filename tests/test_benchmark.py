"""The PPO-variants benchmark runs end to end on the tiny preset and writes sane figures.

One small run (tiny-llama, batch 2, one iteration, SFT + full + hydra + a few others, hydra with gradient
checkpointing among them, each in its own process);
the assertions read the JSON it writes. The numbers themselves are the benchmark's business.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hydra_core.models.hydra import load_hydra

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ppo_variants.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory, base_model_dir):
    out = tmp_path_factory.mktemp("bench")
    # The script's model cache, filled here from the session's tiny base model (saves a process).
    cache = out / "models" / "tiny-llama"
    shutil.copytree(base_model_dir, cache / "base")
    load_hydra(base_model_dir, heads=("reward",), dtype=torch.float32).save(cache / "hydra-sft", kind="hydra-sft")
    cmd = [sys.executable, str(SCRIPT), "--sizes", "tiny-llama", "--variants",
           "sft,full,hydra,hydra-grpo,lora-remax,hydra+gc", "--batch", "2", "--samples-per-prompt", "2",
           "--prompt-length", "6", "--new-tokens", "3", "--iterations", "1", "--warmup", "0", "--lora-rank", "4",
           "--threads", "1", "--device", "cpu", "--out", str(out / "results"), "--cache-dir", str(out / "models")]
    # Outside the repo and with PYTHONSAFEPATH (inherited by the workers), the script's directory is
    # not on sys.path by default: the entry and the `--worker` re-runs must find their modules alone.
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=out, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "building" not in done.stdout  # the cache was used
    return out / "results", json.loads((out / "results" / "ppo_variants.json").read_text()), done.stdout


@pytest.mark.slow
def test_every_run_has_sane_figures(report):
    _, data, _ = report
    runs = {r["variant"]: r for r in data["runs"]}
    assert set(runs) == {"sft", "full", "hydra", "hydra-grpo", "lora-remax", "hydra+gc"}
    for name, r in runs.items():
        assert r["status"] == "ok", r
        assert r["size"] == "tiny-llama" and r["batch"] == 2
        assert r["peak_bytes"] > r["baseline_bytes"] > 0
        assert r["net_peak_bytes"] == r["peak_bytes"] - r["baseline_bytes"]
        assert r["s_per_sample"] > 0 and r["tokens_per_s"] > 0
        mem = r["memory"]
        for key in ("memory/params", "memory/trainable_params", "memory/param_bytes", "memory/grad_bytes",
                    "memory/optimizer_bytes"):
            assert mem[key] > 0, (name, key)
        assert mem["memory/trainable_params"] <= mem["memory/params"]
        # AdamW keeps two fp32 moments per trained weight; the gradients match the trained weights
        assert mem["memory/optimizer_bytes"] >= 2 * mem["memory/trainable_param_bytes"]
        assert mem["memory/grad_bytes"] == mem["memory/trainable_param_bytes"]
    for name in ("full", "hydra", "hydra-grpo", "lora-remax", "hydra+gc"):  # every response ran to the cap: equal work
        assert runs[name]["response_length"] == 3 and runs[name]["eos_rate"] == 0
        assert runs[name]["responses"] == 2  # grpo: one prompt sampled twice; the others: two prompts
        assert set(runs[name]["phases_s"]) == {"generation", "scoring", "old_policy", "training"}
        # the decode floor: the actor's weight bytes x tokens decoded / the measured read bandwidth
        floor = runs[name]["generations"] * runs[name]["decode_weight_bytes"] * 3 / data["memory_bandwidth_bytes_per_s"]
        assert runs[name]["decode_floor_s"] == pytest.approx(floor) and 0 < floor < runs[name]["phases_s"]["generation"]
    assert runs["lora-remax"]["generations"] == 2 and runs["hydra"]["generations"] == 1
    # a lever changes how hydra runs, not what it holds
    assert runs["hydra+gc"]["memory"] == runs["hydra"]["memory"] and runs["hydra+gc"]["backbones"] == 1
    assert runs["hydra+gc"]["phase_peaks_bytes"]["training"] > runs["hydra+gc"]["baseline_bytes"]


def test_hydra_trains_a_sliver_of_one_backbone_and_full_holds_four(report):
    _, data, _ = report
    runs = {r["variant"]: r for r in data["runs"]}
    full, hydra, sft = (runs[v]["memory"] for v in ("full", "hydra", "sft"))
    assert runs["full"]["backbones"] == 4 and runs["hydra"]["backbones"] == 1
    assert hydra["memory/trainable_params"] < 0.2 * full["memory/trainable_params"]
    # full: actor, critic, reference and reward model; hydra: one backbone plus adapters and two heads
    assert 3.5 < full["memory/params"] / hydra["memory/params"] <= 4.0
    assert full["memory/params"] / sft["memory/params"] == pytest.approx(4, rel=0.01)
    assert hydra["memory/optimizer_bytes"] < full["memory/optimizer_bytes"] / 10


def test_critic_free_hydra_trains_the_actor_alone_on_one_backbone(report):
    _, data, _ = report
    runs = {r["variant"]: r for r in data["runs"]}
    ppo, grpo = runs["hydra"], runs["hydra-grpo"]
    assert grpo["backbones"] == 1 and runs["lora-remax"]["backbones"] == 3  # lora without its critic model
    assert grpo["samples_per_prompt"] == 2
    # PPO trains two adapters and a value head; GRPO one adapter
    assert grpo["memory"]["memory/trainable_params"] < 0.6 * ppo["memory"]["memory/trainable_params"]
    assert grpo["memory"]["memory/optimizer_bytes"] < ppo["memory"]["memory/optimizer_bytes"]


def test_report_files_and_targets(report):
    out, data, stdout = report
    assert (out / "ppo_variants.png").stat().st_size > 1000
    names = {t["target"] for t in data["targets"]}
    assert any("SFT" in n for n in names) and any("full-PPO" in n for n in names)
    assert any("Hydra-GRPO" in n for n in names)
    assert any("decode floor" in n for n in names) and any("x the SFT step" in n for n in names)
    assert all(t["verdict"] in ("PASS", "MISS") for t in data["targets"])
    assert "| tiny-llama | hydra" in stdout and "targets" in stdout
