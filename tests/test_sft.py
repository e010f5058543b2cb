import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import kill_and_resume, logged_rows, tiny_sft_config
from hydra_core import checkpoint
from hydra_core.cli import main as cli_main
from hydra_core.models.hydra import CONFIG_FILE, load_hydra
from hydra_core.data.batching import BatchStream
from hydra_core.sft.trainer import SUMMARY_FILE, NonFiniteLossError, run_sft


@pytest.mark.parametrize("mode", ["sft", "rm", "hydra"])
def test_each_mode_trains_and_saves_its_heads(tmp_path, base_model_dir, arithmetic_dir, mode):
    cfg = tiny_sft_config(base_model_dir, arithmetic_dir, str(tmp_path / mode), mode=mode)
    summary = run_sft(cfg, progress=False)
    config = json.loads((tmp_path / mode / CONFIG_FILE).read_text())
    assert config["heads"] == ([] if mode == "sft" else ["reward"])
    assert ("eval/reward_accuracy" in summary) == (mode != "sft")
    assert ("eval/lm_loss" in summary) == (mode != "rm")
    assert 0.0 <= summary["eval/gold_accuracy"] <= 1.0
    assert summary["memory/peak_bytes"] > summary["memory/param_bytes"] > 0
    rows = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6]
    assert json.loads((tmp_path / mode / SUMMARY_FILE).read_text())["steps"] == 6
    assert (tmp_path / mode / "sft_curves.png").stat().st_size > 0


def test_hydra_sft_loss_goes_down(tmp_path, base_model_dir, arithmetic_dir):
    cfg = tiny_sft_config(base_model_dir, arithmetic_dir, str(tmp_path / "h"), steps=30, log_every=5,
                            eval_every=30, learning_rate=3e-3, demo_batch_size=32, pair_batch_size=16)
    run_sft(cfg, progress=False)
    losses = [json.loads(l)["train/loss"] for l in (tmp_path / "h" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in l]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_training_runs_in_the_requested_precision_with_fp32_weights(tmp_path, base_model_dir, arithmetic_dir,
                                                                     precision):
    cfg = tiny_sft_config(base_model_dir, arithmetic_dir, str(tmp_path / precision), mixed_precision=precision)
    summary = run_sft(cfg, progress=False)
    assert summary["mixed_precision"] == precision
    assert all(torch.isfinite(torch.tensor(summary[k])) for k in ("train/loss", "eval/lm_loss"))
    model = load_hydra(str(tmp_path / precision), heads=("reward",))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_lora_training_changes_only_through_the_adapter(tmp_path, base_model_dir, arithmetic_dir):
    cfg = tiny_sft_config(base_model_dir, arithmetic_dir, str(tmp_path / "lora"), lora_rank=4, steps=4)
    summary = run_sft(cfg, progress=False)
    assert summary["memory/trainable_params"] < summary["memory/params"] / 5
    model = load_hydra(str(tmp_path / "lora"), heads=("reward",))  # merged: loads as a plain model
    base = load_hydra(base_model_dir, heads=())
    changed = [n for (n, p), (_, q) in zip(model.backbone.named_parameters(), base.backbone.named_parameters())
               if not torch.equal(p, q)]
    assert changed and all("proj" in n for n in changed)  # LoRA targets linear layers only


def test_checkpoints_are_written_and_cleaned_up(tmp_path, base_model_dir, arithmetic_dir, monkeypatch):
    import hydra_core.sft.trainer as trainer

    seen = []
    original = trainer.checkpoint.save

    def spy(*args, **kwargs):
        path = original(*args, **kwargs)
        seen.append(path.name)
        assert (path / checkpoint.STATE).exists() and (path / checkpoint.WEIGHTS).exists()
        return path

    monkeypatch.setattr(trainer.checkpoint, "save", spy)
    run_sft(tiny_sft_config(base_model_dir, arithmetic_dir, str(tmp_path / "c"), steps=5, checkpoint_every=2),
            progress=False)
    assert seen == ["step-000002", "step-000004"]
    assert not (tmp_path / "c" / checkpoint.DIRECTORY).exists()  # the final model replaces them


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, base_model_dir, arithmetic_dir, monkeypatch):
    import hydra_core.sft.trainer as trainer

    calls = {"n": 0}
    original = trainer.lm_loss

    def poisoned(*args):
        calls["n"] += 1
        return original(*args) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(trainer, "lm_loss", poisoned)
    cfg = tiny_sft_config(base_model_dir, arithmetic_dir, str(tmp_path / "nan"), steps=4, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 3: training loss is nan.*checkpoints/step-000002"):
        run_sft(cfg, progress=False)
    assert checkpoint.latest(tmp_path / "nan").name == "step-000002"


@pytest.mark.slow
def test_sft_resumes_after_a_kill_as_if_never_stopped(tmp_path, base_model_dir, arithmetic_dir):
    command = ["sft", "--model", base_model_dir, "--data", arithmetic_dir, "--steps", "30", "--demo-batch-size", "16",
               "--pair-batch-size", "8", "--eval-every", "10", "--log-every", "2", "--greedy-eval-prompts", "8",
               "--warmup-steps", "2", "--checkpoint-every", "4"]
    straight, killed, printed = kill_and_resume(command, tmp_path, SUMMARY_FILE)
    assert f"resumed from {killed / 'checkpoints'}" in printed
    a, b = logged_rows(straight / "metrics.jsonl"), logged_rows(killed / "metrics.jsonl")
    assert sorted(b) == sorted(a)  # the killed run's rows after its checkpoint were dropped
    for step in a:
        assert b[step] == a[step], step
    for (name, p), (_, q) in zip(load_hydra(str(straight), heads=("reward",)).named_parameters(),
                                 load_hydra(str(killed), heads=("reward",)).named_parameters()):
        assert torch.equal(p, q), name


def test_resume_refuses_other_settings_and_names_them(tmp_path, base_model_dir, arithmetic_dir, monkeypatch):
    import hydra_core.sft.trainer as trainer

    out = str(tmp_path / "r")
    cfg = tiny_sft_config(base_model_dir, arithmetic_dir, out, steps=4, checkpoint_every=2)
    def stop(*args):
        raise RuntimeError("stopped before the end")

    monkeypatch.setattr(trainer, "gold_accuracy", stop)
    with pytest.raises(RuntimeError, match="stopped"):  # stopped at the end: its checkpoints are still there
        run_sft(cfg, progress=False)
    monkeypatch.undo()
    changed = tiny_sft_config(base_model_dir, arithmetic_dir, out, steps=4, checkpoint_every=2, resume=True,
                              lora_rank=4, learning_rate=1e-2)
    with pytest.raises(ValueError, match=r"learning_rate: 0.002 -> 0.01; lora_rank: 0 -> 4"):
        run_sft(changed, progress=False)


def test_batch_stream_shards_one_global_order_across_processes():
    records = list(range(10))
    single = BatchStream(records, 4, seed=3)
    ranks = [BatchStream(records, 2, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(5):  # crosses epoch boundaries
        assert single.next() == ranks[0].next() + ranks[1].next()


def test_cli_sft_reports_a_missing_prepared_directory(tmp_path, base_model_dir, capsys):
    code = cli_main(["sft", "--model", base_model_dir, "--data", str(tmp_path / "nope"),
                     "--output-dir", str(tmp_path / "o"), "--steps", "1"])
    assert code == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_cpu_run_on_gloo(tmp_path, base_model_dir, arithmetic_dir):
    """The same code path as one process, as two torchrun processes on the gloo backend."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           "-m", "hydra_core.cli", "sft", "--model", base_model_dir, "--data", arithmetic_dir,
           "--output-dir", str(out), "--steps", "4", "--demo-batch-size", "8", "--pair-batch-size", "4",
           "--eval-every", "4", "--log-every", "2", "--greedy-eval-prompts", "8", "--checkpoint-every", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("model written to") == 1  # one group, not two independent runs
    assert "4 steps in" in proc.stdout
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["processes"] == 2
    assert Path(out / "model.safetensors").exists()
