import json

import pytest
import torch

from conftest import kill_and_resume, logged_rows, step_zero_logprobs, tiny_ppo_config
from hydra_core.config.settings import ALGORITHMS, PPO_VARIANTS
from hydra_core.models.hydra import CONFIG_FILE, load_hydra
from hydra_core.ppo import algorithm as A
from hydra_core import checkpoint
from hydra_core.ppo.roles import PolicyStack
from hydra_core.ppo.iteration import NonFiniteError
from hydra_core.ppo.trainer import SUMMARY_FILE, run_ppo

# Variants whose reference policy is the actor with its adapters switched off.
DYNAMIC = ("lora-dynamic", "j-hydra", "hydra")


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def algorithm_settings(algorithm: str) -> dict:
    return {"algorithm": algorithm, "samples_per_prompt": 1 if algorithm in ("ppo", "remax") else 2}


EVERY_PAIR = [(v, a) for a in ALGORITHMS for v in PPO_VARIANTS]


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("variant,algorithm", EVERY_PAIR)
def test_step_zero_actor_equals_reference_and_kl_is_zero(tmp_path, hydra_sft_dir, arithmetic_dir, variant,
                                                         algorithm, precision):
    cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, variant=variant, mixed_precision=precision,
                          **algorithm_settings(algorithm))
    stack = PolicyStack(cfg, torch.device("cpu"))
    actor_lp, ref_lp, scores = step_zero_logprobs(stack, arithmetic_dir)
    assert torch.equal(actor_lp, ref_lp)  # exactly: a fresh LoRA adapter is zero
    assert A.kl_penalty(actor_lp, ref_lp, "k1").abs().max().item() == 0.0
    assert scores.shape == (8,) and torch.isfinite(scores).all()
    assert scores.dtype == torch.float32  # the reward is read in fp32 in every precision


@pytest.mark.parametrize("variant", DYNAMIC)
def test_reference_and_reward_share_one_pass_where_the_paper_says(tmp_path, hydra_sft_dir, arithmetic_dir, variant):
    stack = PolicyStack(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, variant=variant), torch.device("cpu"))
    backbones = {id(m) for m in stack.unique_modules()}
    assert len(backbones) == (2 if variant == "lora-dynamic" else 1)
    assert (stack.reference == stack.reward) == (variant != "lora-dynamic")


@pytest.mark.parametrize("variant,algorithm", EVERY_PAIR)
def test_every_variant_and_algorithm_runs_a_few_steps(tmp_path, hydra_sft_dir, arithmetic_dir, variant, algorithm):
    settings = algorithm_settings(algorithm)
    summary = run_ppo(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, variant=variant, **settings),
                      progress=False)
    rows = [r for r in _rows(tmp_path / "metrics.jsonl") if "objective/kl" in r]
    assert [r["step"] for r in rows] == [1, 2]
    # The first rollout is scored before any update: KL 0, exactly. With adapters off the reference is the
    # actor's own computation; `full` holds a separate copy, which HydraModel.forward keeps on the same kernel.
    assert rows[0]["objective/kl"] == 0.0
    for key in ("objective/scores", "objective/rlhf_reward", "policy/approxkl", "policy/clipfrac", "loss/policy",
                "val/ratio", "time/s_per_sample", "time/tokens_per_s", "memory/peak_bytes",
                "time/generation_s", "time/scoring_s", "time/training_s"):
        assert key in rows[1], key
    critic_keys = {"loss/value", "val/mean", "lr/critic"}
    assert critic_keys <= set(rows[1]) if algorithm == "ppo" else not critic_keys & set(rows[1])
    assert "loss/kl" not in rows[1]  # only GRPO with --grpo-kl loss has a KL term in its loss
    assert ("objective/group_reward_std" in rows[1]) == (settings["samples_per_prompt"] > 1)
    assert ("objective/greedy_scores" in rows[1]) == (algorithm == "remax")
    # each iteration trains on rollout_batch_size x samples_per_prompt responses
    assert rows[1]["time/s_per_sample"] == pytest.approx(rows[1]["time/step_s"] / (8 * settings["samples_per_prompt"]))
    assert summary["variant"] == (variant if algorithm == "ppo" else f"{variant}-{algorithm}")
    assert (summary["layout"], summary["algorithm"], summary["loss_normalisation"]) == (variant, algorithm, "token")
    assert summary["memory/trainable_params"] > 0
    if variant != "full":
        assert summary["memory/trainable_params"] < summary["memory/params"] / 4
    assert 0.0 <= summary["eval/gold_accuracy"] <= 1.0
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["variant"] == summary["variant"]
    policy = load_hydra(str(tmp_path), heads=())  # the saved policy loads like any model
    assert policy.tokenizer.eos_token_id is not None
    assert (tmp_path / "ppo_curves.png").stat().st_size > 0


def test_variants_hold_the_paper_number_of_backbones(tmp_path, hydra_sft_dir, arithmetic_dir):
    counts = {v: len(PolicyStack(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, variant=v),
                                 torch.device("cpu")).unique_modules()) for v in PPO_VARIANTS}
    assert counts == {"full": 4, "lora": 4, "lora-dynamic": 2, "j-hydra": 1, "hydra": 1}


@pytest.mark.slow
def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path, hydra_sft_dir, arithmetic_dir):
    command = ["ppo", "--variant", "hydra", "--model", hydra_sft_dir, "--data", arithmetic_dir, "--steps", "4",
               "--rollout-batch-size", "8", "--mini-batch-size", "4", "--ppo-epochs", "2", "--lora-rank", "4",
               "--greedy-eval-prompts", "8", "--checkpoint-every", "2"]
    straight, killed, printed = kill_and_resume(command, tmp_path, SUMMARY_FILE)
    assert "resumed from" in printed
    a, b = logged_rows(straight / "metrics.jsonl"), logged_rows(killed / "metrics.jsonl")
    assert sorted(b) == [0, 1, 2, 3, 4]  # the killed run's rows after its checkpoint were dropped
    for step in a:
        assert b[step] == a[step], step
    for (n, p), (_, q) in zip(load_hydra(str(straight), heads=()).backbone.named_parameters(),
                              load_hydra(str(killed), heads=()).backbone.named_parameters()):
        assert torch.equal(p, q), n


def test_non_finite_reward_stops_and_keeps_the_last_good_checkpoint(tmp_path, hydra_sft_dir, arithmetic_dir,
                                                                    monkeypatch):
    original = PolicyStack.reference_and_scores
    calls = {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        logits, scores = original(self, *args)
        return logits, scores * (float("inf") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(PolicyStack, "reference_and_scores", poisoned)
    cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, steps=4, checkpoint_every=1)
    with pytest.raises(NonFiniteError, match=r"PPO step 3, scoring: reward is not finite.*step-000002"):
        run_ppo(cfg, progress=False)
    assert checkpoint.latest(tmp_path).name == "step-000002"
    monkeypatch.setattr(PolicyStack, "reference_and_scores", original)
    summary = run_ppo(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, steps=4, checkpoint_every=1,
                                      resume=True), progress=False)
    assert summary["steps"] == 4


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.25, 0.75]])
    mask = torch.ones(1, 3)
    adv, ret = A.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.75
    d1 = 0.0 + 0.75 - 0.25
    d0 = 0.0 + 0.25 - 0.5
    expected = torch.tensor([[d0 + 0.5 * (d1 + 0.5 * d2), d1 + 0.5 * d2, d2]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_gae_ignores_tokens_after_eos():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, _ = A.gae(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.2, 0.3, 9.0]]), mask, 1.0, 0.95)
    assert adv[0, 2] == 0 and adv[0, 1] == pytest.approx(1.0 - 0.3)


def test_score_lands_on_the_last_valid_token_and_kl_everywhere():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    kl = torch.full((2, 3), 0.5)
    r = A.shaped_rewards(torch.tensor([2.0, 3.0]), kl * mask, mask, kl_coef=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.05, 1.95, 0.0], [-0.05, -0.05, 2.95]]))


def test_k3_estimator_is_non_negative_and_zero_at_equality():
    lp = torch.randn(4, 5)
    ref = torch.randn(4, 5)
    assert (A.kl_penalty(lp, ref, "k3") >= -1e-6).all()
    assert A.kl_penalty(lp, lp, "k3").abs().max() == 0


def test_clipped_losses():
    adv = torch.tensor([[1.0, -1.0]])
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[2.0, 0.5]]))  # ratios 2 and 0.5, both outside 1 +- 0.2
    loss, stats = A.policy_loss(new, old, adv, torch.ones(1, 2), clip_range=0.2)
    # max(-A*r, -A*clip(r)): -1.2 for the first token, 0.8 for the second
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert stats["policy/clipfrac"].item() == pytest.approx(1.0)
    v_loss, _ = A.value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]),
                             torch.ones(1, 1), clip_range_value=0.2)
    assert v_loss.item() == pytest.approx(0.5 * max((2 - 1) ** 2, (0.2 - 1) ** 2))


def test_a_model_without_a_trained_reward_head_is_refused_as_reward_model(tmp_path, base_model_dir, arithmetic_dir):
    for variant in ("hydra", "lora"):
        with pytest.raises(ValueError, match=r"no trained reward head.*--variant " + variant):
            PolicyStack(tiny_ppo_config(base_model_dir, arithmetic_dir, tmp_path, variant=variant), torch.device("cpu"))
