"""SFT's losses and its held-out measurements (reward pairwise accuracy, LM loss on demonstrations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hydra_core.data.encoding import IGNORE_INDEX, lm_batch, pair_batch


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the labelled (response) positions."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def pairwise_loss(rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss; `rewards` holds the chosen rows then the rejected rows."""
    chosen, rejected = rewards.float().chunk(2)
    return -F.logsigmoid(chosen - rejected).mean()


@torch.no_grad()
def reward_accuracy(model, pairs, max_length: int, batch_size: int = 256) -> dict[str, float]:
    correct, margins = 0, []
    for start in range(0, len(pairs), batch_size):
        batch = pair_batch(model.tokenizer, pairs[start:start + batch_size], max_length)
        out = model(**{k: v.to(model.device) for k, v in batch.items()}, lm=False, reward=True)
        chosen, rejected = out.rewards.float().chunk(2)
        correct += (chosen > rejected).sum().item()
        margins.append(chosen - rejected)
    margin = torch.cat(margins)
    return {"eval/reward_accuracy": correct / len(pairs), "eval/reward_margin": margin.mean().item()}


@torch.no_grad()
def demo_loss(model, demos, max_length: int, batch_size: int = 256) -> float:
    total, count = 0.0, 0
    for start in range(0, len(demos), batch_size):
        rows = lm_batch(model.tokenizer, demos[start:start + batch_size], max_length)
        batch = {k: v.to(model.device) for k, v in rows.items()}
        out = model(batch["input_ids"], batch["attention_mask"])
        n = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
        total += lm_loss(out.logits, batch["labels"]).item() * n
        count += n
    return total / max(count, 1)
