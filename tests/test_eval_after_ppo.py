"""Evaluation of a PPO policy against the SFT model it started from (the default baseline)."""

from hydra_core.config import EvalConfig, PPOConfig
from hydra_core.eval.runner import run_eval
from hydra_core.ppo.trainer import run_ppo


def test_ppo_policy_is_judged_against_its_own_sft_model_by_default(tmp_path, hydra_sft_dir, arithmetic_dir):
    ppo_dir = tmp_path / "ppo"
    run_ppo(PPOConfig(model=hydra_sft_dir, data=arithmetic_dir, output_dir=str(ppo_dir), steps=1,
                      rollout_batch_size=8, mini_batch_size=8, ppo_epochs=1, lora_rank=4, greedy_eval_prompts=8),
            progress=False)
    for judge in ("gold", "reward-model"):
        summary = run_eval(EvalConfig(candidate=str(ppo_dir), prompts=arithmetic_dir, judge=judge, max_prompts=10,
                                      output_dir=str(tmp_path / judge)))
        assert summary["baseline"] == hydra_sft_dir
        assert summary["wins"] + summary["ties"] + summary["losses"] + summary["errors"] == 10
        assert summary["errors"] == 0
