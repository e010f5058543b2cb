"""Who samples step 1's rollouts from the actor (`--rollout-engine`): the trainer's own model, or vLLM.

- `hf`: HF `generate` on the trainer's model with the actor's adapter active (`models.generation`).
- `vllm`: vLLM's engine in this process over the actor's frozen backbone, loaded once from the same directory
  (`models.vllm_engine`). After every update the actor's adapter (a few MB) is saved and served under a new id
  before the next rollout; on CUDA the engine sleeps between rollouts, so training has the GPU to itself.

Either way the trainer takes the token ids back and computes every log-prob itself, so the reference and the
reward still come from ONE adapters-off pass in hydra and j-hydra. The vLLM engine's own log-probs of the
sampled tokens are kept beside the rollout (`Generated.logprobs`) for `rollout/logprob_gap`: how far the
engine's policy is from the one being trained, a known way for engine rollouts to go wrong.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from hydra_core.config.settings import PPOConfig
from hydra_core.models.generation import Decoding, Generated, generate
from hydra_core.ppo.roles import PolicyStack, actor_source


class HFRollouts:
    """HF `generate` on the actor's model, in the trainer's precision."""

    memory_bytes = 0  # nothing beside the trainer's own models

    def __init__(self, stack: PolicyStack):
        self.stack = stack

    def generate(self, prompts, decoding: Decoding, *, max_prompt_length: int, batch_size: int = 256,
                 seed: int = 0) -> Generated:
        with self.stack.generator() as actor:
            return generate(actor, prompts, decoding, max_prompt_length=max_prompt_length, batch_size=batch_size)

    def policy_updated(self) -> None:
        pass  # it samples the trained model itself

    def sleep(self) -> None:
        pass

    def close(self) -> None:
        pass


class VLLMRollouts:
    """vLLM's engine over the actor's frozen backbone, serving the actor's adapter as of the last update.

    `full_length` forces every response to `max_new_tokens` (the memory budget's worst case, as
    `budget.full_length_stack` does for HF)."""

    def __init__(self, cfg: PPOConfig, stack: PolicyStack, sequences: int, full_length: bool = False):
        from hydra_core.models.vllm_engine import VLLMEngine

        self.stack, self.full_length, self.max_new_tokens = stack, full_length, cfg.max_new_tokens
        self.engine = VLLMEngine(actor_source(cfg), device=stack.device, dtype=stack.frozen_dtype,
                                 max_sequences=sequences, max_tokens=cfg.max_prompt_length + cfg.max_new_tokens,
                                 lora_rank=cfg.lora_rank, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code)
        self._folder = Path(tempfile.mkdtemp(prefix="hydra-rollout-adapter-"))
        self._version = 0
        self._stale = True  # the engine serves no adapter yet

    @property
    def memory_bytes(self) -> int:
        return self.engine.memory_bytes

    def _hand_over(self) -> None:
        """Save the actor's adapter as it is now and serve it; the folder of the one served before goes."""
        self._version += 1
        folder = self._folder / f"v{self._version}"
        adapter = self.stack.actor.adapter
        self.stack.policy_model.backbone.save_pretrained(folder, selected_adapters=[adapter])
        self.engine.use_adapter(str(folder / adapter if adapter != "default" else folder))
        shutil.rmtree(self._folder / f"v{self._version - 1}", ignore_errors=True)
        self._stale = False

    def generate(self, prompts, decoding: Decoding, *, max_prompt_length: int, batch_size: int = 256,
                 seed: int = 0) -> Generated:
        if self._stale:
            self._hand_over()
        out = self.engine.generate(self.stack.policy_model.tokenizer, prompts, decoding,
                                   max_prompt_length=max_prompt_length, seed=seed,
                                   min_new_tokens=self.max_new_tokens if self.full_length else 0)
        device = self.stack.device
        out.logprobs = out.logprobs.to(device)
        return out

    def policy_updated(self) -> None:
        self._stale = True

    def sleep(self) -> None:
        self.engine.sleep()

    def close(self) -> None:
        self.engine.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def make_rollouts(cfg: PPOConfig, stack: PolicyStack, full_length: bool = False):
    """The engine `cfg.rollout_engine` names, for this process's share of a rollout (`cfg` is already checked:
    `settings.PPOConfig.relations` refuses what an engine cannot serve)."""
    if cfg.rollout_engine == "hf":
        return HFRollouts(stack)
    responses = cfg.rollout_batch_size * cfg.samples_per_prompt
    return VLLMRollouts(cfg, stack, sequences=responses, full_length=full_length)


def logprob_gap(engine_logprobs: torch.Tensor | None, trainer_logprobs: torch.Tensor, mask: torch.Tensor):
    """The mean absolute difference, over response tokens, between the engine's log-probs of the sampled tokens and
    the trainer's of the same tokens under the same policy; None where the engine gives none (HF)."""
    if engine_logprobs is None:
        return None
    diff = (trainer_logprobs.float() - engine_logprobs.float()).abs() * mask
    return diff.sum() / mask.sum().clamp(min=1)
