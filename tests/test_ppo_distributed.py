"""Data-parallel PPO: two gloo processes on CPU, as `torchrun --nproc_per_node 2` runs them."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import embedded_stages, free_port, kill_and_resume, logged_rows, tiny_ppo_config
from hydra_core import checkpoint
from hydra_core.config.fields import ConfigError, build, flag
from hydra_core.config.settings import PPOConfig
from hydra_core.data.batching import BatchStream
from hydra_core.ppo.trainer import SUMMARY_FILE

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# every layout, and the critic-free algorithms on Hydra (their advantages are whitened or grouped)
LABELS = [("hydra", "ppo"), ("j-hydra", "ppo"), ("lora-dynamic", "ppo"), ("lora", "ppo"), ("full", "ppo"),
          ("hydra", "grpo"), ("hydra", "rloo"), ("hydra", "remax")]


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


@pytest.mark.slow
def test_two_processes_keep_equal_trained_parameters_after_every_step(tmp_path, hydra_sft_dir, arithmetic_dir):
    """Every layout and algorithm: after each optimizer step both processes hold the same trained
    parameters (only their gradients are averaged), each sampled its own half of every rollout batch,
    and at step 1 the KL to the reference is 0."""
    jobs = [dict(vars(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path / f"{v}-{a}", variant=v, algorithm=a,
                                      samples_per_prompt=1 if a in ("ppo", "remax") else 2, checkpoint_every=0)))
            for v, a in LABELS]
    mp.start_processes(_record_every_step, args=(2, free_port(), jobs, str(tmp_path)), nprocs=2,
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


@pytest.mark.slow
def test_a_two_process_run_resumes_after_a_kill(tmp_path, hydra_sft_dir, arithmetic_dir):
    """The uninterrupted run goes through `accelerate launch`, the killed and resumed one through torchrun: the
    same group either way, and the resumed run ends as the uninterrupted one."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                  "--main_process_port", str(free_port())]
    command = ["ppo", "--variant", "hydra", "--model", hydra_sft_dir, "--data", arithmetic_dir, "--steps", "4",
               "--rollout-batch-size", "8", "--mini-batch-size", "4", "--ppo-epochs", "2", "--lora-rank", "4",
               "--greedy-eval-prompts", "8", "--max-new-tokens", "5", "--checkpoint-every", "2"]
    straight, killed, printed = kill_and_resume(command, tmp_path, SUMMARY_FILE, launcher=TORCHRUN,
                                                straight_launcher=accelerate)
    assert printed.count("resumed from") == 1  # the main process says so, once
    assert json.loads((straight / SUMMARY_FILE).read_text())["processes"] == 2
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


@pytest.mark.embedded
def test_two_processes_raise_gold_accuracy_on_the_embedded_default_as_one_does(tmp_path):
    """The embedded default's Hydra-SFT (1,500 steps, minutes), then its Hydra-PPO in one process and in two
    at the same global batch: both raise the greedy gold accuracy."""
    stage, env = embedded_stages(tmp_path)
    gold = {}
    for processes, launcher in ((1, (sys.executable,)), (2, TORCHRUN)):
        out = tmp_path / f"ppo-{processes}"
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // processes))
        stage("ppo", "--model", str(tmp_path / "sft"), "--data", str(tmp_path / "data"), "--output-dir", str(out),
              launcher=launcher)
        summary = json.loads((out / SUMMARY_FILE).read_text())
        assert summary["processes"] == processes
        gold[processes] = (summary["eval/gold_accuracy_before"], summary["eval/gold_accuracy"])
        print(f"{processes} process(es): greedy gold accuracy {gold[processes][0]:.4f} -> {gold[processes][1]:.4f}, "
              f"{summary['train_seconds_this_run']:.0f} s")
    assert gold[1][0] == gold[2][0]  # one SFT model, one eval set
    for before, after in gold.values():
        assert after > before + 0.1
