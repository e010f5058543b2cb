"""Shared fixtures: a tiny random-init base model, a small arithmetic prepared directory, and a
briefly trained Hydra-SFT model. Built once per test session."""

from __future__ import annotations

import pytest

from hydra_core.config import DataConfig, ModelInitConfig, TrainConfig
from hydra_core.data.prepare import prepare
from hydra_core.models.presets import build_base_model
from hydra_core.train.trainer import train


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory):
    return str(build_base_model(ModelInitConfig(output_dir=str(tmp_path_factory.mktemp("base")))))


@pytest.fixture(scope="session")
def arithmetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("arith")
    prepare(DataConfig(format="arithmetic", output_dir=str(out), max_records=400, arithmetic_eval_prompts=40),
            progress=False)
    return str(out)


def tiny_train_config(base: str, data: str, out: str, **changes) -> TrainConfig:
    defaults = dict(model=base, data=data, output_dir=out, steps=6, demo_batch_size=16, pair_batch_size=8,
                    eval_every=3, log_every=2, checkpoint_every=0, greedy_eval_prompts=16, warmup_steps=1)
    return TrainConfig(**{**defaults, **changes})


@pytest.fixture(scope="session")
def hydra_sft_dir(tmp_path_factory, base_model_dir, arithmetic_dir):
    out = tmp_path_factory.mktemp("hydra-sft")
    train(tiny_train_config(base_model_dir, arithmetic_dir, str(out)), progress=False)
    return str(out)
