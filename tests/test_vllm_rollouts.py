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

from hydra_core.cli import main
from hydra_core.config.fields import ConfigError, build, flag
from hydra_core.config.settings import ModelInitConfig, PPOConfig
from hydra_core.data.splits import load_split
from hydra_core.models.generation import Decoding, generate
from hydra_core.models.hydra import load_hydra
from hydra_core.models.presets import build_base_model
from hydra_core.ppo.iteration import build_optimizer, ppo_iteration
from hydra_core.ppo.roles import PolicyStack
from hydra_core.ppo.rollouts import HFRollouts, make_rollouts
from hydra_core.ppo.trainer import run_ppo
from conftest import embedded_stages, tiny_ppo_config

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


def test_without_the_extra_ppo_and_eval_stop_in_one_line_naming_it(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    for command in (["ppo", "--model", str(tmp_path / "nothing-loaded")], ["eval", "--candidate", str(tmp_path)]):
        assert main([*command, "--rollout-engine", "vllm", "--output-dir", str(tmp_path / "out")]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert "--rollout-engine vllm needs vLLM, which is not installed" in line
        assert "hydra-rlhf[vllm]" in line and "./setup.sh --vllm" in line
        assert not (tmp_path / "out").exists()  # stopped before any work


@needs_vllm
@pytest.mark.embedded
def test_vllm_rollouts_raise_gold_accuracy_on_the_embedded_default_as_hf_generate_does(tmp_path):
    """The embedded default's Hydra-SFT (1,500 steps, minutes), then its Hydra-PPO once with each rollout engine:
    both raise the greedy gold accuracy, to within 3 points of each other."""
    stage, env = embedded_stages(tmp_path)
    gold = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / f"ppo-{engine}"
        stage("ppo", "--model", str(tmp_path / "sft"), "--data", str(tmp_path / "data"), "--output-dir", str(out),
              "--rollout-engine", engine)
        summary = json.loads((out / "ppo_summary.json").read_text())
        gold[engine] = (summary["eval/gold_accuracy_before"], summary["eval/gold_accuracy"])
        print(f"{engine}: greedy gold accuracy {gold[engine][0]:.4f} -> {gold[engine][1]:.4f}, "
              f"{summary['train_seconds_this_run']:.0f} s, generation {summary['time/generation_s']:.2f} s/step"
              + (f", logprob gap {summary['rollout/logprob_gap']:.2e}" if engine == "vllm" else ""))
    assert gold["hf"][0] == gold["vllm"][0]  # one SFT model, one eval set, greedy through either engine
    for before, after in gold.values():
        assert after > before + 0.1
    assert abs(gold["vllm"][1] - gold["hf"][1]) <= 0.03
