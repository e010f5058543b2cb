"""PPO with each model's backbone sharded over the data-parallel processes by FSDP2 (`--shard-backbone`): two
gloo processes on CPU, as `torchrun --nproc_per_node 2` runs them, against the same run unsharded."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import free_port, logged_rows, tiny_ppo_config
from hydra_core import checkpoint
from hydra_core.config.fields import ConfigError, build, flag
from hydra_core.config.settings import PPOConfig
from test_ppo_distributed import _fingerprint

# the layouts that train adapters, and a critic-free algorithm (its group advantages, no value head)
LABELS = [("hydra", "ppo"), ("j-hydra", "ppo"), ("lora-dynamic", "ppo"), ("lora", "ppo"), ("hydra", "grpo")]


def _record(rank: int, world: int, port: int, jobs: list[dict], record: str) -> None:
    """One of `world` processes: run PPO for each job; write per job the trained parameters' fingerprint after
    every optimizer step (gathered whole where sharded), their final values, and how the backbones are held."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from hydra_core.distributed import full_tensor, is_sharded
    from hydra_core.ppo import trainer

    seen: dict = {}
    build_optimizer = trainer.build_optimizer

    def recording_optimizer(cfg, stack):
        optimizer, scheduler = build_optimizer(cfg, stack)
        step = optimizer.step
        trained = stack.actor_params + stack.critic_params
        frozen = [p for model in stack.models.values() for p in model.backbone.parameters()
                  if all(p is not q for q in trained)]
        seen["frozen"] = {"count": len(frozen), "sharded": sum(map(is_sharded, frozen)),
                          "halves": sum(is_sharded(p) and p.to_local().shape[0] * 2 == p.shape[0] for p in frozen)}
        seen["trained_sharded"] = sum(map(is_sharded, trained))

        def step_and_record(*args, **kwargs):
            out = step(*args, **kwargs)
            seen["steps"].append(_fingerprint([full_tensor(p.detach()) for p in trained]))
            seen["final"] = {name: full_tensor(p.detach()).clone() for name, p in stack.named_trainable().items()}
            return out

        optimizer.step = step_and_record
        return optimizer, scheduler

    trainer.build_optimizer = recording_optimizer
    results = []
    for i, job in enumerate(jobs):
        seen.clear()
        seen["steps"] = []
        summary = trainer.run_ppo(PPOConfig(**job), progress=False)
        if rank == 0:
            torch.save(seen.pop("final"), Path(record, f"final{i}.pt"))
        seen.pop("final", None)
        results.append({**seen, "summary": summary})
    Path(record, f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sharded_ppo_trains_as_unsharded_data_parallel_ppo(tmp_path, hydra_sft_dir, arithmetic_dir):
    """Each adapter layout, sharded and not: after every optimizer step both processes hold the same trained
    parameters; sharded, each holds half of every frozen backbone weight, the KL is 0 at step 1, and the trained
    parameters and the saved policy are those of the unsharded run (FSDP's gradient mean is another sum order)."""
    jobs = []
    for variant, algorithm in LABELS:
        for shard in (True, False):
            out = tmp_path / f"{variant}-{algorithm}-{'sharded' if shard else 'replicated'}"
            jobs.append(dict(vars(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, out, variant=variant,
                                                  algorithm=algorithm, samples_per_prompt=2 if algorithm == "grpo"
                                                  else 1, shard_backbone=shard, mixed_precision="no"))))
    mp.start_processes(_record, args=(2, free_port(), jobs, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for i, (variant, algorithm) in enumerate(LABELS):
        label = f"{variant}-{algorithm}"
        sharded, replicated = (i * 2, i * 2 + 1)
        first, second = ranks[0][sharded], ranks[1][sharded]
        assert len(first["steps"]) == 2 * (8 * jobs[sharded]["samples_per_prompt"] // 4), label
        assert first["steps"] == second["steps"], label  # equal on both processes after every step
        assert len(set(first["steps"])) == len(first["steps"]), label  # every step changed them
        frozen = first["frozen"]
        assert frozen["count"] > 0 and frozen["sharded"] == frozen["count"], (label, frozen)
        assert frozen["halves"] == frozen["count"], (label, frozen)  # the tiny model's dims are all even
        assert first["trained_sharded"] > 0, label
        assert ranks[0][replicated]["frozen"]["sharded"] == 0, label
        assert second["summary"] == {}  # only the main process writes
        out = Path(jobs[sharded]["output_dir"])
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert next(r for r in rows if r["step"] == 1 and "objective/kl" in r)["objective/kl"] == 0.0, label
        assert "eval/gold_accuracy" in first["summary"] and first["summary"]["processes"] == 2

        mine, theirs = (torch.load(tmp_path / f"final{j}.pt") for j in (sharded, replicated))
        assert mine.keys() == theirs.keys(), label
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-5, msg=f"{label} {name}")
        policy = load_file(out / "model.safetensors")
        reference = load_file(Path(jobs[replicated]["output_dir"]) / "model.safetensors")
        assert policy.keys() == reference.keys(), label
        for name in policy:
            torch.testing.assert_close(policy[name], reference[name], rtol=1e-4, atol=1e-5, msg=f"{label} {name}")


def _die_at(rank: int, world: int, port: int, jobs: list[dict], record: str, step: int) -> None:
    """`_record`, but the process ends at once, as a killed one does (no clean-up, no further collective), when
    PPO step `step` is about to start: right after the previous step's checkpoint."""
    from hydra_core.ppo import trainer

    iteration = trainer.ppo_iteration

    def dying(cfg, stack, batch, optimizer, scheduler, at, *args):
        if at == step:
            os._exit(0)  # 0: else start_processes would stop the other process, maybe before it got here
        return iteration(cfg, stack, batch, optimizer, scheduler, at, *args)

    trainer.ppo_iteration = dying
    _record(rank, world, port, jobs, record)


@pytest.mark.slow
def test_a_sharded_run_killed_after_a_checkpoint_resumes_exactly(tmp_path, hydra_sft_dir, arithmetic_dir):
    """Both processes of a sharded run die right after step 1's checkpoint (each wrote its shards with DCP); resumed
    on 2 processes it ends with the uninterrupted sharded run's trained parameters, policy and metrics. Resuming
    it on another number of processes is refused in one line."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    job = dict(vars(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, killed, shard_backbone=True, checkpoint_every=1,
                                    mixed_precision="no")))
    (tmp_path / "dying").mkdir()
    mp.start_processes(_die_at, args=(2, free_port(), [job], str(tmp_path / "dying"), 2), nprocs=2,
                       start_method="spawn")
    assert not (killed / "model.safetensors").exists() and not (tmp_path / "dying" / "rank0.json").exists()
    written = checkpoint.latest(killed)
    assert written.name == "step-000001"
    files = json.loads((written / checkpoint.STATE).read_text())["files"]
    assert {"dcp/__0_0.distcp", "dcp/__1_0.distcp", "dcp/.metadata"} <= set(files)  # a shard from each process
    assert not (written / checkpoint.WEIGHTS).exists()
    with pytest.raises(ValueError) as refused:
        checkpoint.load(written, {}, None, None, {}, job, rank=0, world=1)  # run_ppo's call, in one process
    assert str(refused.value) == (f"{written} was written by 2 data-parallel process(es) and this run has 1; resume "
                                  "with 2 (each process's data and random state are in the checkpoint)")

    (tmp_path / "resumed").mkdir()
    mp.start_processes(_record, args=(2, free_port(), [{**job, "resume": True}, {**job, "output_dir": str(straight)}],
                                      str(tmp_path / "resumed")), nprocs=2, start_method="spawn")
    resumed_steps, straight_steps = json.loads((tmp_path / "resumed" / "rank0.json").read_text())
    assert len(resumed_steps["steps"]) == len(straight_steps["steps"]) // 2  # it ran step 2 alone
    assert resumed_steps["steps"] == straight_steps["steps"][len(resumed_steps["steps"]):]
    mine, theirs = (torch.load(tmp_path / "resumed" / f"final{i}.pt") for i in (0, 1))
    assert mine.keys() == theirs.keys()
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], msg=name)
    policy, reference = load_file(killed / "model.safetensors"), load_file(straight / "model.safetensors")
    assert policy.keys() == reference.keys()
    for name in policy:
        torch.testing.assert_close(policy[name], reference[name], msg=name)
    assert logged_rows(killed / "metrics.jsonl") == logged_rows(straight / "metrics.jsonl")
    assert sorted(logged_rows(straight / "metrics.jsonl")) == [0, 1, 2]


def _refusal(monkeypatch, world: int, **settings) -> str:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(ConfigError) as e:
        build(PPOConfig, ({"rollout_batch_size": 8, "mini_batch_size": 4, **settings}, flag))
    return str(e.value)


@pytest.mark.parametrize("settings,named", [({"variant": "full"}, "shard_backbone"),
                                            ({"quantize_backbone": "4bit"}, "shard_backbone")])
def test_what_sharding_does_not_support_is_refused_up_front(monkeypatch, settings, named):
    message = _refusal(monkeypatch, 2, shard_backbone=True, **settings)
    assert message.startswith(flag(named)) and len(message.splitlines()) == 1, message
    monkeypatch.setenv("WORLD_SIZE", "2")
    build(PPOConfig, ({"rollout_batch_size": 8, "mini_batch_size": 4, **settings}, flag))  # fine unsharded


def test_sharding_needs_processes_and_an_accelerate_fsdp_config_is_not_taken_for_it(monkeypatch):
    assert "this is 1" in _refusal(monkeypatch, 1, shard_backbone=True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch exports for distributed_type FSDP
    message = _refusal(monkeypatch, 2, shard_backbone=True)
    assert message.startswith(flag("shard_backbone")) and "configs/accelerate-fsdp.yaml" in message
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert build(PPOConfig, ({"rollout_batch_size": 8, "mini_batch_size": 4, "shard_backbone": True}, flag))
