"""Issue 15's two correctness guarantees: reusing the first training forward as the old policy's pass
changes no number, and the precision policy stores each weight in the dtype it promises."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import logged_rows, tiny_ppo_config
from hydra_core import runtime
from hydra_core.data.splits import load_split
from hydra_core.ppo.roles import PolicyStack, frozen_weights_dtype
from hydra_core.ppo.iteration import build_optimizer, ppo_iteration
from hydra_core.ppo.trainer import run_ppo

ONE_UPDATE = dict(ppo_epochs=1, mini_batch_size=0)  # the paper's setting: one update per rollout


def _settings(algorithm: str) -> dict:
    return {"algorithm": algorithm, "samples_per_prompt": 2 if algorithm in ("rloo", "grpo") else 1}


@pytest.mark.parametrize("variant,algorithm", [("hydra", "ppo"), ("j-hydra", "ppo"), ("full", "ppo"),
                                               ("hydra", "grpo"), ("lora", "remax")])
def test_reusing_the_training_forward_gives_the_separate_pass_numbers(tmp_path, hydra_sft_dir, arithmetic_dir,
                                                                      variant, algorithm):
    runs = {}
    for reuse in (True, False):
        out = tmp_path / str(reuse)
        cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, out, variant=variant, steps=3, eval_every=0,
                              reuse_training_forward=reuse, **ONE_UPDATE, **_settings(algorithm))
        run_ppo(cfg, progress=False)
        runs[reuse] = (logged_rows(out / "metrics.jsonl"), load_file(out / "model.safetensors"))
    (rows_reused, weights_reused), (rows_separate, weights_separate) = runs[True], runs[False]
    assert rows_reused == rows_separate  # every loss and metric of every step, exactly
    assert rows_reused[3]["policy/approxkl"] == 0.0 and rows_reused[3]["val/ratio"] == 1.0
    assert weights_reused.keys() == weights_separate.keys()
    assert all(torch.equal(weights_reused[k], weights_separate[k]) for k in weights_reused)


def _count_passes(stack: PolicyStack, monkeypatch) -> dict[str, int]:
    calls = {"actor": 0, "critic": 0}
    for name, method in (("actor", "actor_forward"), ("critic", "critic_values")):
        original = getattr(stack, method)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(stack, method, counted)
    return calls


@pytest.mark.parametrize("variant,settings,actor,critic", [
    ("hydra", ONE_UPDATE, 1, 2),  # the actor's old log-probs come from its training forward
    ("j-hydra", ONE_UPDATE, 1, 0),  # one pass gives j-hydra's log-probs and values
    ("hydra", dict(ONE_UPDATE, reuse_training_forward=False), 2, 2),
    ("hydra", dict(ppo_epochs=2, mini_batch_size=0), 3, 3),  # two updates: the old policy needs its own pass
    ("hydra", dict(ppo_epochs=1, mini_batch_size=4), 3, 3),  # two mini-batches likewise
])
def test_the_old_policy_takes_no_pass_of_its_own_with_one_update_per_rollout(
        tmp_path, hydra_sft_dir, arithmetic_dir, monkeypatch, variant, settings, actor, critic):
    cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, variant=variant,
                          **{**dict(rollout_batch_size=8), **settings})
    stack = PolicyStack(cfg, torch.device("cpu"))
    optimizer, scheduler = build_optimizer(cfg, stack)
    calls = _count_passes(stack, monkeypatch)
    prompts = load_split(arithmetic_dir, "prompts_train")[:8]
    metrics = ppo_iteration(cfg, stack, prompts, optimizer, scheduler, 1, None)
    assert calls == {"actor": actor, "critic": critic}
    assert {"time/generation_s", "time/scoring_s", "time/old_policy_s", "time/training_s"} <= set(metrics)


def test_precision_policy_per_device(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.mixed_precision("auto", cpu) == "no"  # emulated bf16 is slower than fp32
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.mixed_precision("auto", cpu) == "bf16"
    assert runtime.mixed_precision("no", cpu) == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.mixed_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.mixed_precision("auto", torch.device("cuda")) == "no"
    assert frozen_weights_dtype("bf16", trains_in_full=False) == torch.bfloat16
    assert frozen_weights_dtype("bf16", trains_in_full=True) == torch.float32  # full's twins: exact step 0
    assert frozen_weights_dtype("no", trains_in_full=False) == torch.float32


@pytest.mark.parametrize("variant", ["hydra", "lora", "full"])
def test_bf16_stores_frozen_backbones_in_bf16_and_trained_weights_and_heads_in_fp32(
        tmp_path, hydra_sft_dir, arithmetic_dir, variant):
    cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, variant=variant, mixed_precision="bf16")
    stack = PolicyStack(cfg, torch.device("cpu"))
    assert stack.precision == "bf16" and stack.autocast_dtype == torch.bfloat16
    trained = {id(p) for p in stack.actor_params + stack.critic_params}
    for model in stack.unique_modules():
        for name, p in model.named_parameters():
            if id(p) in trained or name.startswith("heads.") or "lora_" in name:
                assert p.dtype == torch.float32, name
            else:
                assert p.dtype == (torch.float32 if variant == "full" else torch.bfloat16), name


def test_a_bf16_run_starts_at_kl_zero_and_records_its_precision(tmp_path, hydra_sft_dir, arithmetic_dir):
    cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, mixed_precision="bf16", eval_every=0)
    summary = run_ppo(cfg, progress=False)
    rows = logged_rows(tmp_path / "metrics.jsonl")
    assert rows[1]["objective/kl"] == 0.0
    assert summary["mixed_precision"] == "bf16"
    assert torch.isfinite(torch.tensor(rows[2]["loss/policy"]))

