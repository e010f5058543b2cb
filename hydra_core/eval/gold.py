"""Greedy gold accuracy: the share of held-out prompts whose greedy response the task's verifier
accepts (tasks with a verifier only, such as the embedded arithmetic task).

SFT measures it at its end and PPO before and after training; both call this with the length
their configs give (`max_new_tokens`, 6 by default in both), so one model gets one figure.
"""

from __future__ import annotations

import torch

from hydra_core.data.tasks import Verifier
from hydra_core.models.generation import Decoding


@torch.no_grad()
def gold_accuracy(sample, prompts, verifier: Verifier, max_new_tokens: int, max_prompt_length: int = 512) -> float:
    """`sample(prompt texts, decoding, max_prompt_length=...)` gives the responses: `partial(generation.generate,
    model)` for a model, or the PPO stage's rollout engine (`ppo.rollouts`)."""
    out = sample([p.prompt for p in prompts], Decoding(max_new_tokens=max_new_tokens, greedy=True),
                 max_prompt_length=max_prompt_length)
    ok = [bool(end) and verifier(p.prompt, text) for p, text, end in zip(prompts, out.texts, out.ended.tolist())]
    return sum(ok) / len(ok)
