"""The critic-free algorithms (RLOO, GRPO, ReMax): their maths on hand-computed examples, the models
they hold, and a resumed run. Every algorithm x layout running a few steps is in test_ppo.py."""

import math

import pytest
import torch

from conftest import kill_and_resume, logged_rows, tiny_ppo_config
from hydra_core.config.fields import ConfigError, build
from hydra_core.config.settings import PPOConfig, parse_run_label, run_label
from hydra_core.ppo import algorithm as A
from hydra_core.ppo.roles import PolicyStack
from hydra_core.ppo.iteration import build_optimizer, estimate_advantages
from hydra_core.ppo.trainer import SUMMARY_FILE

GROUPS = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])  # two prompts, k = 4; the second has no spread


def test_rloo_subtracts_the_mean_of_the_other_responses_to_the_same_prompt():
    adv = A.rloo_advantages(GROUPS, 4)
    # 1 - (2+3+6)/3, 2 - (1+3+6)/3, 3 - (1+2+6)/3, 6 - (1+2+3)/3
    torch.testing.assert_close(adv, torch.tensor([-8 / 3, -4 / 3, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0]))


def test_grpo_normalises_within_each_group():
    std = math.sqrt((4 + 1 + 0 + 9) / 3)  # deviations -2, -1, 0, 3 from the mean 3; unbiased
    expected = torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (std + 1e-4)
    adv = A.grpo_advantages(GROUPS, 4, scale=True)
    torch.testing.assert_close(adv[:4], expected)
    assert torch.equal(adv[4:], torch.zeros(4))  # a group with no spread teaches nothing (and no 0/0)
    torch.testing.assert_close(A.grpo_advantages(GROUPS, 4, scale=False)[:4], torch.tensor([-2.0, -1.0, 0.0, 3.0]))


def test_remax_subtracts_the_greedy_response_reward_of_each_prompt():
    adv = A.remax_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.5, 5.0]))
    torch.testing.assert_close(adv, torch.tensor([-0.5, 0.5, -2.0, -1.0]))


def test_group_statistics():
    stats = A.group_stats(GROUPS, 4)
    assert stats["objective/group_reward_std"].item() == pytest.approx(math.sqrt(14 / 3) / 2)
    assert stats["objective/zero_spread_groups"].item() == 0.5


def test_grpo_k3_kl_term_matches_deepseekmath():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -2.0, -0.2])
    # DeepSeekMath: pi_ref/pi - log(pi_ref/pi) - 1
    expected = torch.exp(ref - logp) - (ref - logp) - 1
    torch.testing.assert_close(A.kl_penalty(logp, ref, "k3"), expected)
    logp.requires_grad_(True)
    A.kl_penalty(logp, ref, "k3").sum().backward()
    torch.testing.assert_close(logp.grad, 1 - torch.exp(ref - logp.detach()))
    assert logp.grad[1] == 0  # zero gradient where the policy equals the reference


def test_sequence_rewards_and_loss_normalisation():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    kl = torch.tensor([[0.5, 0.5, 9.0], [0.1, 0.1, 0.1]])
    torch.testing.assert_close(A.sequence_rewards(torch.tensor([2.0, 3.0]), kl, mask, kl_coef=0.1),
                               torch.tensor([2.0 - 0.1, 3.0 - 0.03]))
    x = torch.tensor([[1.0, 3.0, 100.0], [6.0, 6.0, 6.0]])
    assert A.aggregate(x, mask, "token").item() == pytest.approx((1 + 3 + 18) / 5)
    assert A.aggregate(x, mask, "sequence").item() == pytest.approx((2 + 6) / 2)


def _cfg(**changes) -> PPOConfig:
    return PPOConfig(**{"whiten_advantages": False, "kl_coef": 0.5, **changes})


def test_estimate_advantages_gives_each_token_its_sequence_advantage():
    scores = torch.tensor([1.0, 3.0, 0.0, 0.0])
    kl = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    adv, returns = estimate_advantages(_cfg(algorithm="rloo", samples_per_prompt=2), scores, kl, mask)
    assert returns is None
    # rewards 1 - 0.5*2 = 0 and 3: advantages -3 and +3, on the valid tokens only
    torch.testing.assert_close(adv, torch.tensor([[-3.0, -3.0], [3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    # GRPO with the KL in the loss leaves it out of the reward: 1 vs 3
    adv, _ = estimate_advantages(_cfg(algorithm="grpo", samples_per_prompt=2, grpo_scale_rewards=False,
                                      grpo_kl="loss"), scores, kl, mask)
    torch.testing.assert_close(adv[:2], torch.tensor([[-1.0, -1.0], [1.0, 0.0]]))
    adv, _ = estimate_advantages(_cfg(algorithm="grpo", samples_per_prompt=2, grpo_scale_rewards=False,
                                      grpo_kl="reward"), scores, kl, mask)
    torch.testing.assert_close(adv[:2], torch.tensor([[-1.5, -1.5], [1.5, 0.0]]))
    adv, _ = estimate_advantages(_cfg(algorithm="remax", samples_per_prompt=2), scores, kl, mask,
                                 greedy_scores=torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(adv, torch.tensor([[-2.0, -2.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    whitened, _ = estimate_advantages(_cfg(algorithm="rloo", samples_per_prompt=2, whiten_advantages=True), scores,
                                      kl, torch.ones(4, 2))
    assert whitened[:, 0].mean().abs().item() < 1e-6 and whitened[:, 0].std().item() == pytest.approx(1.0)


@pytest.mark.parametrize("variant", ["hydra", "j-hydra"])
def test_critic_free_hydra_holds_one_backbone_one_adapter_and_no_value_head(tmp_path, hydra_sft_dir, arithmetic_dir,
                                                                             variant):
    cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, variant=variant, algorithm="grpo",
                          samples_per_prompt=2)
    stack = PolicyStack(cfg, torch.device("cpu"))
    (model,) = stack.unique_modules()
    assert stack.critic is None and stack.critic_params == []
    assert list(model.heads) == ["reward"]  # the reward head is read with adapters off; no value head
    assert list(model.backbone.peft_config) == [stack.actor.adapter]
    trained = stack.named_trainable()
    assert trained and all("lora_" in name for name in trained)
    optimizer, _ = build_optimizer(cfg, stack)
    assert len(optimizer.param_groups) == 1


def test_critic_free_trains_fewer_parameters_than_ppo(tmp_path, hydra_sft_dir, arithmetic_dir):
    sizes = {algorithm: sum(p.numel() for p in PolicyStack(
        tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, algorithm=algorithm, samples_per_prompt=2),
        torch.device("cpu")).named_trainable().values()) for algorithm in ("ppo", "rloo")}
    assert sizes["rloo"] < sizes["ppo"]


def test_settings_of_the_critic_free_algorithms_are_checked():
    flags = lambda name: f"--{name.replace('_', '-')}"  # noqa: E731
    with pytest.raises(ConfigError, match="--samples-per-prompt: rloo compares.*at least 2"):
        build(PPOConfig, ({"algorithm": "rloo", "samples_per_prompt": 1}, flags))
    with pytest.raises(ConfigError, match="--mini-batch-size: 80 is more than the 64 responses"):
        build(PPOConfig, ({"rollout_batch_size": 16, "samples_per_prompt": 4, "mini_batch_size": 80}, flags))
    with pytest.raises(ConfigError, match="--algorithm: 'dpo' is not one of ppo, rloo, grpo, remax"):
        build(PPOConfig, ({"algorithm": "dpo"}, flags))
    assert build(PPOConfig, ({"algorithm": "remax"}, flags)).samples_per_prompt == 1  # one sample + the greedy one


def test_run_labels_name_a_layout_and_an_algorithm():
    assert parse_run_label("hydra") == {"variant": "hydra", "algorithm": "ppo"}
    assert parse_run_label("lora-dynamic-grpo") == {"variant": "lora-dynamic", "algorithm": "grpo"}
    assert parse_run_label("j-hydra-ppo") == {"variant": "j-hydra", "algorithm": "ppo"}
    assert run_label("hydra", "rloo") == "hydra-rloo" and run_label("lora", "ppo") == "lora"
    with pytest.raises(ValueError, match="'hydra-dpo' is not a variant or variant-algorithm pair"):
        parse_run_label("hydra-dpo")


@pytest.mark.slow
def test_grpo_resumes_after_a_kill(tmp_path, hydra_sft_dir, arithmetic_dir):
    command = ["ppo", "--variant", "hydra", "--algorithm", "grpo", "--grpo-kl", "loss", "--samples-per-prompt", "2",
               "--model",
               hydra_sft_dir, "--data", arithmetic_dir, "--steps", "4", "--rollout-batch-size", "4",
               "--mini-batch-size", "4", "--ppo-epochs", "2", "--lora-rank", "4", "--greedy-eval-prompts", "8",
               "--checkpoint-every", "2"]
    straight, killed, printed = kill_and_resume(command, tmp_path, SUMMARY_FILE)
    assert "resumed from" in printed
    a, b = logged_rows(straight / "metrics.jsonl"), logged_rows(killed / "metrics.jsonl")
    assert sorted(b) == [0, 1, 2, 3, 4]
    assert all("loss/kl" in a[step] for step in range(1, 5))
    for step in a:
        assert b[step] == a[step], step
