"""Data-parallel PPO: two gloo processes on CPU, as `torchrun --nproc_per_node 2` runs them."""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import kill_and_resume, logged_rows, tiny_ppo_config
from hydra_core import checkpoint
from hydra_core.config import ConfigError, PPOConfig, build, flag
from hydra_core.data.batching import BatchStream
from hydra_core.ppo.trainer import SUMMARY_FILE

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# every layout, and the critic-free algorithms on Hydra (their advantages are whitened or grouped)
LABELS = [("hydra", "ppo"), ("j-hydra", "ppo"), ("lora-dynamic", "ppo"), ("lora", "ppo"), ("full", "ppo"),
          ("hydra", "grpo"), ("hydra", "rloo"), ("hydra", "remax")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fingerprint(params) -> str:
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _record_every_step(rank: int, world: int, port: int, jobs: list[dict], record: str) -> None:
    """One of `world` processes: run PPO for each job and write, per job, a fingerprint of the trained
    parameters after every optimizer step and the prompts this process drew."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from hydra_core.ppo import trainer

    seen = {"steps": [], "prompts": []}
    build_optimizer, draw = trainer.build_optimizer, BatchStream.next

    def recording_optimizer(cfg, stack):
        optimizer, scheduler = build_optimizer(cfg, stack)
        step = optimizer.step

        def step_and_record(*args, **kwargs):
            out = step(*args, **kwargs)
            seen["steps"].append(_fingerprint(stack.actor_params + stack.critic_params))
            return out

        optimizer.step = step_and_record
        return optimizer, scheduler

    def recording_draw(stream):
        batch = draw(stream)
        seen["prompts"].append([p.prompt for p in batch])
        return batch

    trainer.build_optimizer = recording_optimizer
    BatchStream.next = recording_draw
    results = []
    for job in jobs:
        seen["steps"], seen["prompts"] = [], []
        summary = trainer.run_ppo(PPOConfig(**job), progress=False)
        results.append({**seen, "summary": summary})
    Path(record, f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


def test_two_processes_keep_equal_trained_parameters_after_every_step(tmp_path, hydra_sft_dir, arithmetic_dir):
    """Every layout and algorithm: after each optimizer step both processes hold the same trained
    parameters (only their gradients are averaged), each sampled its own half of every rollout batch,
    and at step 1 the KL to the reference is 0."""
    jobs = [dict(vars(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path / f"{v}-{a}", variant=v, algorithm=a,
                                      samples_per_prompt=1 if a in ("ppo", "remax") else 2, checkpoint_every=0)))
            for v, a in LABELS]
    mp.start_processes(_record_every_step, args=(2, _free_port(), jobs, str(tmp_path)), nprocs=2,
                       start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for (variant, algorithm), job, first, second in zip(LABELS, jobs, *ranks):
        label = f"{variant}-{algorithm}"
        # 2 iterations of 8 prompts x k responses, in mini-batches of 4 responses
        assert len(first["steps"]) == 2 * (8 * job["samples_per_prompt"] // 4), label
        assert first["steps"] == second["steps"], label
        assert len(set(first["steps"])) == len(first["steps"]), label  # every step changed them
        for mine, theirs in zip(first["prompts"], second["prompts"]):
            assert len(mine) == len(theirs) == 4
            assert mine != theirs, label
        assert second["summary"] == {}  # only the main process writes
        summary = first["summary"]
        assert summary["processes"] == 2
        rows = [json.loads(line) for line in (Path(job["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
        step_one = next(r for r in rows if r["step"] == 1 and "objective/kl" in r)
        assert step_one["objective/kl"] == 0.0, label
        assert (Path(job["output_dir"]) / "model.safetensors").exists()


def test_the_prompts_of_two_processes_are_those_of_one(arithmetic_dir):
    """A global batch of 8 prompts in two processes is the one process's batch of 8, split in two."""
    from hydra_core.data.splits import load_split

    prompts = load_split(arithmetic_dir, "prompts_train")
    one = BatchStream(prompts, 8, seed=3)
    two = [BatchStream(prompts, 4, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(3):
        assert one.next() == two[0].next() + two[1].next()


def test_a_two_process_run_resumes_after_a_kill(tmp_path, hydra_sft_dir, arithmetic_dir):
    command = ["ppo", "--variant", "hydra", "--model", hydra_sft_dir, "--data", arithmetic_dir, "--steps", "4",
               "--rollout-batch-size", "8", "--mini-batch-size", "4", "--ppo-epochs", "2", "--lora-rank", "4",
               "--greedy-eval-prompts", "8", "--max-new-tokens", "5", "--checkpoint-every", "2"]
    straight, killed, printed = kill_and_resume(command, tmp_path, SUMMARY_FILE, launcher=TORCHRUN)
    assert printed.count("resumed from") == 1  # the main process says so, once
    a, b = logged_rows(straight / "metrics.jsonl"), logged_rows(killed / "metrics.jsonl")
    assert sorted(b) == [0, 1, 2, 3, 4]
    for step in a:
        assert b[step] == a[step], step  # each process's RNG state came back: the same rollouts
    state = json.loads((checkpoint.latest(killed) / checkpoint.STATE).read_text())
    assert state["processes"] == 2 and len(state["rng_other_processes"]) == 1

    one = subprocess.run([sys.executable, "-m", "hydra_core.cli", *command, "--output-dir", str(killed), "--resume"],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode != 0
    assert "written by 2 data-parallel process(es) and this run has 1; resume with 2" in one.stderr


@pytest.mark.parametrize("setting,value,field", [("rollout_batch_size", 7, "rollout_batch_size"),
                                                 ("mini_batch_size", 3, "mini_batch_size"),
                                                 ("memory_budget", "4GiB", "memory_budget"),
                                                 ("device", "cuda:1", "device")])
def test_settings_that_do_not_split_over_the_processes_are_refused(monkeypatch, setting, value, field):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as e:
        build(PPOConfig, ({"rollout_batch_size": 8, "mini_batch_size": 4, setting: value}, flag))
    assert flag(field) in str(e.value) and "2 data-parallel processes" in str(e.value)
    monkeypatch.setenv("WORLD_SIZE", "1")
    build(PPOConfig, ({"rollout_batch_size": 8, "mini_batch_size": 4, setting: value}, flag))
