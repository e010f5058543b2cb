"""Evaluation of a PPO policy against the SFT model it started from (the default baseline)."""

from hydra_core.config.settings import EvalConfig, PPOConfig
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


def test_sft_and_ppo_measure_gold_accuracy_the_same_way(tmp_path, base_model_dir, hydra_sft_dir, arithmetic_dir,
                                                        monkeypatch):
    """SFT's final gold accuracy and PPO's 'before' figure are one measurement of one model."""
    import hydra_core.ppo.trainer as ppo_trainer
    import hydra_core.sft.trainer as sft_trainer
    from conftest import tiny_sft_config
    from hydra_core.config.settings import SFTConfig

    lengths = {}

    def spy(stage, original):
        def measure(model, prompts, verifier, max_new_tokens, *args):
            lengths.setdefault(stage, set()).add((len(prompts), max_new_tokens))
            return original(model, prompts, verifier, max_new_tokens, *args)
        return measure

    monkeypatch.setattr(sft_trainer, "gold_accuracy", spy("sft", sft_trainer.gold_accuracy))
    monkeypatch.setattr(ppo_trainer, "gold_accuracy", spy("ppo", ppo_trainer.gold_accuracy))
    sft_trainer.run_sft(tiny_sft_config(base_model_dir, arithmetic_dir, str(tmp_path / "sft"), steps=2,
                                        greedy_eval_prompts=8), progress=False)
    ppo_trainer.run_ppo(PPOConfig(model=hydra_sft_dir, data=arithmetic_dir, output_dir=str(tmp_path / "ppo"), steps=1,
                                  rollout_batch_size=8, mini_batch_size=8, ppo_epochs=1, lora_rank=4,
                                  greedy_eval_prompts=8), progress=False)
    assert SFTConfig().max_new_tokens == PPOConfig().max_new_tokens == EvalConfig().max_new_tokens
    assert lengths == {"sft": {(8, SFTConfig().max_new_tokens)}, "ppo": {(8, PPOConfig().max_new_tokens)}}
