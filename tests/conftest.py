"""Shared fixtures: a tiny random-init base model, a small arithmetic prepared directory, and a
briefly trained Hydra-SFT model, built once per test session; the project's CPU image for the docker tests;
what a component function is handed for a kfp artifact."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components.image import IMAGE
from hydra_core import checkpoint
from hydra_core.config.settings import DataConfig, ModelInitConfig, PPOConfig, SFTConfig
from hydra_core.data.prepare import prepare
from hydra_core.data.splits import load_split
from hydra_core.models.generation import Decoding, generate
from hydra_core.models.presets import build_base_model
from hydra_core.ppo import algorithm as A
from hydra_core.sft.trainer import run_sft


ROOT = Path(__file__).resolve().parents[1]


class KfpArtifact:
    """What a component function gets for a kfp artifact: a local path and its metadata."""

    def __init__(self, path, metadata=None):
        self.path, self.metadata = str(path), dict(metadata or {})

    def log_metric(self, name, value):  # as a Metrics output
        self.metadata[name] = value


def _docker_client():
    try:
        import docker
    except ImportError:
        pytest.skip("the docker tests need the Docker client package: pip install 'kubeflow[docker]' (the test extra)")
    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception as e:  # no package, no socket, no permission: all mean no Docker here
        pytest.skip(f"no Docker daemon answers ({type(e).__name__}): start one to run the docker tests")


@pytest.fixture(scope="session")
def image():
    """The components' CPU image: reused when present, else built by containers/build.sh with the options in
    HYDRA_RLHF_BUILD_OPTIONS (e.g. "--debootstrap --wheelhouse" where no registry is reachable)."""
    import docker

    client = _docker_client()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        options = shlex.split(os.environ.get("HYDRA_RLHF_BUILD_OPTIONS", ""))
        subprocess.run([str(ROOT / "containers" / "build.sh"), *options], check=True, timeout=3600)
    finally:
        client.close()
    return IMAGE


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory):
    return str(build_base_model(ModelInitConfig(output_dir=str(tmp_path_factory.mktemp("base")))))


@pytest.fixture(scope="session")
def arithmetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("arith")
    prepare(DataConfig(format="arithmetic", output_dir=str(out), max_records=400, arithmetic_eval_prompts=40),
            progress=False)
    return str(out)


def tiny_sft_config(base: str, data: str, out: str, **changes) -> SFTConfig:
    defaults = dict(model=base, data=data, output_dir=out, steps=6, demo_batch_size=16, pair_batch_size=8,
                    eval_every=3, log_every=2, checkpoint_every=0, greedy_eval_prompts=16, warmup_steps=1)
    return SFTConfig(**{**defaults, **changes})


def step_zero_logprobs(stack, data_dir: str):
    """Sample 8 rollouts from a fresh stack's actor, then the actor's and the reference's log-probs of them
    (no grad) and the reward model's scores: (actor_logprobs, reference_logprobs, scores)."""
    prompts = [p.prompt for p in load_split(data_dir, "prompts_train")[:8]]
    torch.manual_seed(0)
    with stack.generator() as actor:
        g = generate(actor, prompts, Decoding(max_new_tokens=5, greedy=False))
    ids = torch.cat([g.query_ids, g.response_ids], 1)
    mask = torch.cat([g.query_mask, g.response_mask], 1)
    P, R = g.query_ids.shape[1], g.response_ids.shape[1]
    select = (slice(None), slice(P - 1, P + R - 1))
    with torch.no_grad():
        actor_logits = stack.actor_forward(ids, mask, select, with_values=False).logits
        ref_logits, scores = stack.reference_and_scores(ids, mask, select)
    return (A.token_logprobs(actor_logits, g.response_ids, 1.0), A.token_logprobs(ref_logits, g.response_ids, 1.0),
            scores)


def tiny_ppo_config(model: str, data: str, out, **changes) -> PPOConfig:
    defaults = dict(model=model, data=data, output_dir=str(out), steps=2, rollout_batch_size=8, mini_batch_size=4,
                    ppo_epochs=1, lora_rank=4, greedy_eval_prompts=8, max_new_tokens=5)
    return PPOConfig(**{**defaults, **changes})


@pytest.fixture(scope="session")
def hydra_sft_dir(tmp_path_factory, base_model_dir, arithmetic_dir):
    out = tmp_path_factory.mktemp("hydra-sft")
    run_sft(tiny_sft_config(base_model_dir, arithmetic_dir, str(out)), progress=False)
    return str(out)


def logged_rows(path: Path) -> dict[int, dict]:
    """A metrics.jsonl's rows merged by step, without timings and memory (which differ run to run)."""
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(
            {k: v for k, v in row.items() if not k.startswith(("time", "memory")) and k != "step"})
    return rows


def embedded_stages(tmp_path: Path):
    """The embedded default's base model, data and Hydra-SFT (1,500 steps, minutes) under `tmp_path`, each stage a
    fresh process on its recipe; returns the stage runner (`stage(*args, launcher=...)`, asserting success) and its
    environment, which a caller may change between stages."""
    recipe = ["--config", str(ROOT / "configs" / "embedded-default.yaml")]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}

    def stage(*args, launcher=(sys.executable,)):
        proc = subprocess.run([*launcher, "-m", "hydra_core.cli", *args, *recipe], env=env, capture_output=True,
                              text=True, timeout=3600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    stage("init-model", "--output-dir", str(tmp_path / "base"))
    stage("prepare", "--output-dir", str(tmp_path / "data"))
    stage("sft", "--model", str(tmp_path / "base"), "--data", str(tmp_path / "data"), "--output-dir",
          str(tmp_path / "sft"))
    return stage, env


def free_port() -> int:
    """A port free on 127.0.0.1 now: for a server or a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_and_resume(command: list[str], tmp_path: Path, summary_file: str,
                    launcher: tuple[str, ...] = (sys.executable,),
                    straight_launcher: tuple[str, ...] | None = None) -> tuple[Path, Path, str]:
    """Run `hydra-rlhf <command>` (through `straight_launcher`, default `launcher`, e.g. torchrun) to its end in
    tmp_path/straight; run it through `launcher` again in tmp_path/killed, SIGKILL it (every process it
    started) as soon as its first checkpoint is complete, and resume it there with --resume. Returns both
    output directories and what the resumed run printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [*launcher, "-m", "hydra_core.cli", *command]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([*(straight_launcher or launcher), "-m", "hydra_core.cli", *command, "--output-dir", str(straight)],
                   env=env, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen([*cli, "--output-dir", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while checkpoint.latest(killed) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.latest(killed) is not None
    assert not (killed / summary_file).exists()  # it really died before the end
    resumed = subprocess.run([*cli, "--output-dir", str(killed), "--resume"], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return straight, killed, resumed.stdout


def stop_process_group(process: subprocess.Popen, timeout_s: float = 15) -> None:
    """End a server started in a session of its own (`start_new_session`), its workers with it: TERM,
    then KILL if it has not gone in `timeout_s`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


DOCS = ROOT / "docs"


def code_blocks(page: str, language: str) -> list[str]:
    """The fenced `language` blocks of a documentation page (a path under docs/, or README.md), as written."""
    import re

    path = ROOT / page if page == "README.md" else DOCS / page
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)
