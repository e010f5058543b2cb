"""Rollouts through vLLM's engine (`--rollout-engine vllm`): the same tokens as HF generate from the same policy,
the actor's adapter handed over after every update, and the settings it cannot serve refused up front.

The tests that run an engine need the vllm extra (`./setup.sh --vllm`, which the README's test command and CI use).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from hydra_core.config.fields import ConfigError, build, flag
from hydra_core.config.settings import EvalConfig, ModelInitConfig, PPOConfig
from hydra_core.data.splits import load_split
from hydra_core.models.generation import Decoding, generate
from hydra_core.models.hydra import load_hydra
from hydra_core.models.presets import build_base_model
from hydra_core.ppo.iteration import build_optimizer, ppo_iteration
from hydra_core.ppo.roles import PolicyStack
from hydra_core.ppo.rollouts import HFRollouts, make_rollouts
from hydra_core.ppo.trainer import run_ppo
from tests.conftest import tiny_ppo_config

needs_vllm = pytest.mark.skipif(not any(Path(p, "vllm").is_dir() for p in sys.path if p),
                                reason="the vllm extra is not installed (./setup.sh --vllm)")


def hydra_dir_of(preset: str, out: Path) -> str:
    """A random-init `preset` saved as a Hydra directory (random heads): a policy and reward model for PPO."""
    base = build_base_model(ModelInitConfig(output_dir=str(out / "base"), preset=preset))
    load_hydra(str(base), dtype=torch.float32).save(out / "hydra", kind="hydra-sft", sft_model=str(base))
    return str(out / "hydra")


GREEDY = Decoding(max_new_tokens=10, greedy=True)


def tokens(out) -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(out.response_ids, out.response_mask)]


def greedy(rollouts, prompts) -> list[list[int]]:
    return tokens(rollouts.generate(prompts, GREEDY, max_prompt_length=64))


@needs_vllm
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2"])
def test_greedy_vllm_rollouts_are_hf_generates_tokens_before_and_after_two_updates(tmp_path, arithmetic_dir, preset):
    model = hydra_dir_of(preset, tmp_path)
    # a learning rate this high moves a random model's greedy tokens within two updates
    cfg = tiny_ppo_config(model, arithmetic_dir, tmp_path / "ppo", variant="hydra", rollout_engine="vllm",
                          mixed_precision="no", learning_rate=0.05, ppo_epochs=2, max_new_tokens=10)
    stack = PolicyStack(cfg, torch.device("cpu"))
    optimizer, scheduler = build_optimizer(cfg, stack)
    prompts = load_split(arithmetic_dir, "prompts_train")
    texts = [p.prompt for p in prompts[:12]]
    hf, engine = HFRollouts(stack), make_rollouts(cfg, stack)
    try:
        assert greedy(engine, texts) == greedy(hf, texts)  # step 0: the adapter's B is zero, the policy the base
        for step in (1, 2):
            metrics = ppo_iteration(cfg, stack, prompts[8 * step:8 * step + 8], optimizer, scheduler, step, None,
                                    rollouts=engine)
            # fp32 on both sides: the engine sampled from the very policy the trainer scored
            assert metrics["rollout/logprob_gap"] < 1e-3
        after = greedy(engine, texts)
        assert after == greedy(hf, texts)
        with stack.active(stack.reference) as backbone:  # the adapters off
            assert after != tokens(generate(backbone, texts, GREEDY, max_prompt_length=64))
    finally:
        engine.close()


@needs_vllm
@pytest.mark.parametrize("variant,algorithm", [("lora-dynamic", "ppo"), ("j-hydra", "grpo"), ("hydra", "remax"),
                                               ("lora", "rloo")])
def test_every_adapter_layout_and_algorithm_trains_with_vllm_rollouts(tmp_path, arithmetic_dir, hydra_sft_dir,
                                                                      variant, algorithm):
    k = 2 if algorithm in ("grpo", "rloo") else 1
    cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, variant=variant, algorithm=algorithm,
                          samples_per_prompt=k, rollout_engine="vllm", steps=2, eval_every=1)
    summary = run_ppo(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    gaps = [row["rollout/logprob_gap"] for row in rows if "rollout/logprob_gap" in row]
    assert len(gaps) == 2 and all(gap < 1e-3 for gap in gaps)
    assert summary["memory/engine_bytes"] > 0 and 0 <= summary["eval/gold_accuracy"] <= 1


@pytest.mark.parametrize("changes,words", [
    ({"variant": "full"}, "full trains the whole policy"),
    ({"quantize_backbone": "8bit"}, "--quantize-backbone no"),
])
def test_settings_the_vllm_engine_cannot_serve_are_refused_in_one_line(changes, words):
    with pytest.raises(ConfigError) as e:
        build(PPOConfig, ({"rollout_engine": "vllm", **changes}, flag))
    assert "--rollout-engine" in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_vllm_rollouts_in_data_parallel_processes_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--rollout-engine: vllm runs in one process"):
        build(PPOConfig, ({"rollout_engine": "vllm", "rollout_batch_size": 8, "mini_batch_size": 4}, flag))


@pytest.mark.parametrize("stage", [PPOConfig, EvalConfig])
def test_without_the_extra_the_vllm_engine_stops_in_one_line_naming_it(monkeypatch, stage):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError) as e:
        build(stage, ({"rollout_engine": "vllm"}, flag))
    assert "--rollout-engine: vllm needs vLLM, which is not installed" in str(e.value)
    assert "hydra-rlhf[vllm]" in str(e.value) and "./setup.sh --vllm" in str(e.value)
