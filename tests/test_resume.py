"""A local pipeline run whose PPO step is killed (SIGKILL) after a checkpoint, continued by `run --resume`: the
finished steps are taken from their folders, PPO resumes from its checkpoint in its own MLflow run, and the policy
is the one an uninterrupted PPO step trains."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from conftest import ROOT
from hydra_core import cli
from hydra_core.checkpoint_store import RESUMED_PARAM, RESUMED_TAG
from hydra_core.config.files import config_file_name
from hydra_core.config.settings import PPOConfig

RUN = ["max_records=400", 'data_config={"arithmetic_eval_prompts": 40}', "sft_steps=20", "sft_demo_batch_size=16",
       "sft_pair_batch_size=8", 'sft_config={"eval_every": 10, "log_every": 5, "greedy_eval_prompts": 16, '
       '"warmup_steps": 1}', "ppo_variants=hydra", "ppo_steps=6", "ppo_rollout_batch_size=8", "ppo_mini_batch_size=4",
       'ppo_config={"greedy_eval_prompts": 16, "ppo_epochs": 1, "checkpoint_every": 2, "eval_every": 3}',
       "eval_max_prompts=10"]


def _ppo_step(run: subprocess.Popen) -> list[psutil.Process]:
    """The processes of the run's PPO step (kfp's executor running the hydra_ppo component): its own alone, not
    those of another test's run beside it."""
    found = []
    for process in psutil.Process(run.pid).children(recursive=True):
        try:
            line = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "executor_main" in line and "hydra_ppo" in line:
            found.append(process)
    return found


def _kill_ppo_after_its_first_checkpoint(out: Path, run: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        if list((out / "checkpoints").glob("ppo-hydra-*/checkpoints/step-*/state.json")):
            killed = _ppo_step(run)
            for process in killed:
                process.send_signal(signal.SIGKILL)
            if killed:
                return
        time.sleep(0.05)
    raise AssertionError(f"the PPO step wrote no checkpoint (run ended: {run.poll()})")


@pytest.mark.slow
def test_a_killed_ppo_step_resumes_with_run_resume_to_the_uninterrupted_policy(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    argv = [sys.executable, "-m", "hydra_core.cli", "run", "--output-dir", str(out),
            *[arg for pair in RUN for arg in ("-p", pair)]]
    run = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _kill_ppo_after_its_first_checkpoint(out, run)
    printed = run.communicate(timeout=600)[0]
    assert run.returncode == 1, printed
    assert f"hydra-rlhf run --resume {out}" in printed
    assert json.loads((out / "run.json").read_text())["state"] == "failed"
    [kept] = (out / "checkpoints").glob("ppo-hydra-*")

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["run", "--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pipeline finished" in printed
    ppo_log = (out / "logs" / "hydra-ppo-hydra.log").read_text()
    assert f"resumed from {kept}/checkpoints/step-" in ppo_log
    assert not kept.exists()  # the finished step removed its checkpoints
    assert json.loads((out / "run.json").read_text())["state"] == "succeeded"
    assert cli.main(["run", "--resume", str(out)]) == 2  # finished: nothing to continue
    assert cli.main(["run", "--output-dir", str(out)]) == 2  # a new run would take this one's steps from its cache
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"hydra-rlhf run: error: --resume {out}: that run finished; there is nothing to continue",
                      f"hydra-rlhf run: error: --output-dir {out}: holds an earlier run (run.json); continue it "
                      f"with --resume {out}, or choose another folder"], errors

    first, resumed = sorted((out / "pipeline").iterdir(), key=lambda p: p.stat().st_mtime)
    for step in ("data-prep", "hydra-sft"):  # taken from the first run's folders, not run again
        assert list(first.glob(f"{step}*")) and not list(resumed.glob(f"{step}*")), step
    [policy] = resumed.glob("**/hydra-ppo*/policy")
    # the same PPO step, uninterrupted: its saved settings, with no checkpoint location
    reference = tmp_path / "uninterrupted"
    assert cli.main(["ppo", "--config", str(policy / config_file_name(PPOConfig)), "--output-dir", str(reference),
                     "--checkpoint-uri", ""]) == 0
    assert (policy / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("hydra-rlhf").experiment_id])
    by_name: dict = {}
    for r in runs:
        by_name.setdefault(r.info.run_name, []).append(r)
    [ppo], [sft], [prep] = by_name["ppo-hydra"], by_name["hydra-sft"], by_name["data-prep"]
    [parent] = [r for r in runs if r.data.tags.get("hydra_rlhf.stage") == "pipeline"]
    assert all(r.info.status == "FINISHED" for r in runs), {r.info.run_name: r.info.status for r in runs}
    assert ppo.data.tags["mlflow.parentRunId"] == parent.info.run_id == sft.data.tags["mlflow.parentRunId"] == \
        prep.data.tags["mlflow.parentRunId"]
    resumed_at = int(ppo.data.tags[RESUMED_TAG])
    assert resumed_at in (2, 4) and ppo.data.params[RESUMED_PARAM] == str(resumed_at)
    for key in ("objective/kl", "loss/policy", "time/s_per_sample"):
        assert sorted(m.step for m in client.get_metric_history(ppo.info.run_id, key)) == [1, 2, 3, 4, 5, 6], key
    gold = sorted(m.step for m in client.get_metric_history(ppo.info.run_id, "eval/gold_accuracy"))
    assert gold == [0, 3, 6]
    assert len(by_name["register-hydra"]) == 1 and len(client.search_model_versions("name='hydra-rlhf-policy'")) == 1
