"""Checkpoints and output folders: a damaged newest checkpoint falls back to the one before, a
crafted one cannot run code, a used folder is refused unless resumed or started over, and two
stages cannot write one folder at once."""

import json
import pickle
import shutil
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from conftest import free_port, tiny_sft_config
from hydra_core import checkpoint, cli, stages
from hydra_core.config.settings import EvalConfig
from hydra_core.data.batching import BatchStream
from hydra_core.tracking.runs import Tracking


def tiny_run(seed=0, shard=False):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    if shard:  # its parameters become DTensors, as in a --shard-backbone run
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return dict(model.named_parameters()), optimizer, scheduler, {"prompts": BatchStream(list(range(10)), 3, seed=1)}


def save(directory, step, run, config=None):
    trainable, optimizer, scheduler, streams = run
    return checkpoint.save(directory, step, trainable, optimizer, scheduler, streams, [{"step": step}],
                           config or {"lr": 0.1})


def test_a_checkpoint_restores_weights_optimizer_streams_and_rng(tmp_path):
    run = tiny_run()
    run[3]["prompts"].next()
    path = save(tmp_path, 1, run)
    expected = torch.rand(3)  # drawn right after the save: the restored RNG must draw it again
    other = tiny_run(seed=7)
    step, history = checkpoint.load(path, other[0], other[1], other[2], other[3], {"lr": 0.1})
    assert step == 1 and history == [{"step": 1}]
    assert all(torch.equal(run[0][n], other[0][n]) for n in run[0])
    assert other[1].state_dict()["state"][0]["exp_avg"].equal(run[1].state_dict()["state"][0]["exp_avg"])
    assert other[2].get_last_lr() == run[2].get_last_lr() and other[3]["prompts"].position == 3
    assert torch.equal(torch.rand(3), expected)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    run = tiny_run()
    save(tmp_path, 1, run)
    newest = save(tmp_path, 2, run)
    weights = newest / checkpoint.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])  # cut short, as by a full disk
    with pytest.warns(RuntimeWarning, match=r"step-000002 is not usable \(weights.safetensors does not match its "
                                            r"checksum"):
        assert checkpoint.latest(tmp_path).name == "step-000001"
    (newest / checkpoint.STATE).unlink()  # killed before it was complete
    with pytest.warns(RuntimeWarning, match="unfinished"):
        assert checkpoint.latest(tmp_path).name == "step-000001"


def test_only_the_newest_two_are_kept(tmp_path):
    run = tiny_run()
    for step in (1, 2, 3):
        save(tmp_path, step, run)
    assert sorted(p.name for p in (tmp_path / checkpoint.DIRECTORY).iterdir()) == ["step-000002", "step-000003"]


class Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('ran')",))


def test_a_crafted_checkpoint_fails_to_load_instead_of_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tiny_run()
    path = save(tmp_path, 1, run)
    crafted = pickle.dumps({"state": {}, "param_groups": [], "x": Payload()})
    (path / checkpoint.OPTIMIZER).write_bytes(crafted)
    # its checksum made to match, as an attacker with write access to the volume would
    state = json.loads((path / checkpoint.STATE).read_text())
    state["files"][checkpoint.OPTIMIZER] = checkpoint._sha256(path / checkpoint.OPTIMIZER)
    (path / checkpoint.STATE).write_text(json.dumps(state))
    assert checkpoint.latest(tmp_path) == path
    with pytest.raises(ValueError, match=r"optimizer.pt holds objects other than tensors and numbers; not loaded"):
        checkpoint.load(path, *run, {"lr": 0.1})
    assert not (tmp_path / "PWNED").exists()


def test_resuming_with_other_settings_names_them(tmp_path):
    run = tiny_run()
    path = save(tmp_path, 1, run, config={"lora_rank": 8, "learning_rate": 0.1, "eval_every": 2})
    with pytest.raises(ValueError, match=r"Differing: lora_rank: 8 -> 4$"):
        checkpoint.load(path, *run, {"lora_rank": 4, "learning_rate": 0.1, "eval_every": 5}, may_differ=("eval_every",))


@pytest.fixture
def one_process_group():
    """A gloo group of this process alone: FSDP2 makes DTensors in it, and DCP writes and reads as in N."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_sharded_checkpoint_is_written_with_dcp_and_restores_everything(tmp_path, one_process_group):
    run = tiny_run(shard=True)
    run[3]["prompts"].next()
    path = save(tmp_path, 1, run)
    expected = torch.rand(3)
    state = json.loads((path / checkpoint.STATE).read_text())
    shards = sorted(p.relative_to(path).as_posix() for p in (path / checkpoint.SHARDS).iterdir())
    assert shards == ["dcp/.metadata", "dcp/__0_0.distcp"] and set(state["files"]) == {*shards, checkpoint.RNG_TENSORS}
    assert not (path / checkpoint.WEIGHTS).exists() and not (path / checkpoint.OPTIMIZER).exists()
    other = tiny_run(seed=7, shard=True)
    assert not torch.equal(run[0]["weight"].full_tensor(), other[0]["weight"].full_tensor())
    step, history = checkpoint.load(path, other[0], other[1], other[2], other[3], {"lr": 0.1})
    assert step == 1 and history == [{"step": 1}]
    assert all(torch.equal(run[0][n].full_tensor(), other[0][n].full_tensor()) for n in run[0])
    mine, theirs = run[1].state_dict(), other[1].state_dict()
    assert json.dumps(mine["param_groups"]) == json.dumps(theirs["param_groups"])  # betas: a list from JSON
    for i in mine["state"]:
        for key, value in mine["state"][i].items():
            assert type(theirs["state"][i][key]) is type(value), key  # the moments sharded, the step count whole
            assert torch.equal(getattr(value, "full_tensor", lambda: value)(),
                               getattr(theirs["state"][i][key], "full_tensor", lambda: theirs["state"][i][key])())
    assert other[2].get_last_lr() == run[2].get_last_lr() and other[3]["prompts"].position == 3
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(ValueError, match=r"written by 1 data-parallel process\(es\) and this run has 2; resume with 1"):
        checkpoint.load(path, *other, {"lr": 0.1}, world=2)


def test_a_damaged_or_crafted_shard_file_is_not_loaded(tmp_path, one_process_group, monkeypatch):
    run = tiny_run(shard=True)
    save(tmp_path, 1, run)
    newest = save(tmp_path, 2, run)
    shard = newest / checkpoint.SHARDS / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.warns(RuntimeWarning, match=r"step-000002 is not usable \(dcp/__0_0.distcp does not match"):
        assert checkpoint.latest(tmp_path).name == "step-000001"
    shutil.rmtree(newest)

    monkeypatch.chdir(tmp_path)
    path = checkpoint.latest(tmp_path)
    index = path / checkpoint.SHARDS / ".metadata"
    index.write_bytes(pickle.dumps(Payload()))
    state = json.loads((path / checkpoint.STATE).read_text())
    state["files"]["dcp/.metadata"] = checkpoint._sha256(index)  # as an attacker with write access would
    (path / checkpoint.STATE).write_text(json.dumps(state))
    assert checkpoint.latest(tmp_path) == path
    with pytest.raises(ValueError, match=r"\.metadata holds objects other than a checkpoint's index; not loaded"):
        checkpoint.load(path, *run, {"lr": 0.1})
    assert not (tmp_path / "PWNED").exists()


# --- output folders ---------------------------------------------------------------------------------


def sft_args(base, data, out, *extra):
    return ["sft", "--model", base, "--data", data, "--output-dir", str(out), "--steps", "2", "--demo-batch-size", "4",
            "--pair-batch-size", "2", "--eval-every", "2", "--log-every", "1", "--greedy-eval-prompts", "4",
            "--checkpoint-every", "0", *extra]


def test_a_used_folder_is_refused_unless_resumed_or_started_over(tmp_path, base_model_dir, arithmetic_dir, capsys):
    out = tmp_path / "sft"
    assert cli.main(sft_args(base_model_dir, arithmetic_dir, out)) == 0
    rows = (out / "metrics.jsonl").read_text()
    assert cli.main(sft_args(base_model_dir, arithmetic_dir, out)) == 2
    err = capsys.readouterr().err
    assert "holds an earlier sft run (sft_config.json, metrics.jsonl, sft_summary.json); pass --resume" in err
    assert (out / "metrics.jsonl").read_text() == rows  # untouched
    assert cli.main(sft_args(base_model_dir, arithmetic_dir, out, "--resume", "--overwrite")) == 2
    assert "--overwrite: and --resume contradict each other" in capsys.readouterr().err
    assert cli.main(sft_args(base_model_dir, arithmetic_dir, out, "--overwrite")) == 0
    assert (out / "metrics.jsonl").read_text().count('"step": 1,') == 1  # one run's rows, not two


@pytest.mark.parametrize("stage", ["sft", "eval"])
def test_a_folder_another_run_is_writing_is_refused(tmp_path, base_model_dir, hydra_sft_dir, arithmetic_dir, stage):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom hydra_core import stages\n"
        f"with stages._exclusive({str(out)!r}, {stage!r}):\n    print('held', flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(ValueError, match=rf"another hydra-rlhf {stage} is writing there now"):
            if stage == "sft":
                stages.sft(tiny_sft_config(base_model_dir, arithmetic_dir, str(out), steps=1), Tracking())
            else:  # two evals at once would each pay a paid judge for every judgment
                stages.evaluate(EvalConfig(candidate=hydra_sft_dir, baseline=hydra_sft_dir, prompts=arithmetic_dir,
                                           output_dir=str(out), max_prompts=2), Tracking())
        assert time.monotonic() - started < 30  # refused at once, not after the work
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "metrics.jsonl").exists() and not (out / "eval_summary.json").exists()
