"""The RL-for-LLM maths, as small pure functions with the usual names.

Tensors are [batch, response_length] over response tokens, with `mask` 1 on tokens up to and
including EOS; sequence quantities are [batch]. The k responses to one prompt (a group) are
adjacent rows: prompt i's are rows i*k .. i*k+k-1. Nothing here knows about models or variants.
Statistics over the whole batch take `total`, the sum over data-parallel processes of a local sum
(the identity in one process), so that N processes whiten as one process with all their rows would.

Advantages: PPO estimates them per token with a critic (GAE); the critic-free algorithms give every
token of a response its sequence's advantage, its reward minus a baseline that needs no critic:
  rloo  - the mean reward of the other k-1 responses to the same prompt ("Back to Basics", 2024)
  grpo  - the group's mean, the difference divided by the group's std (DeepSeekMath, 2024)
  remax - the reward of the greedy response to the same prompt (ReMax, 2023)
"""

from __future__ import annotations

from typing import Callable

import torch

Total = Callable[[torch.Tensor], torch.Tensor]


def one_process(x: torch.Tensor) -> torch.Tensor:
    return x


def masked_mean(x: torch.Tensor, mask: torch.Tensor, total: Total = one_process) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return total((x * mask).sum()) / total(mask.sum()).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, total: Total = one_process) -> torch.Tensor:
    mean = masked_mean(x, mask, total)
    var = masked_mean((x - mean) ** 2, mask, total)
    n = total(mask.sum())
    return var * n / (n - 1) if n > 1 else var  # unbiased, as whitening in the reference PPO code


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, total: Total = one_process) -> torch.Tensor:
    mean, var = masked_mean(x, mask, total), masked_var(x, mask, total)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token) under logits / temperature; the same temperature for policy and reference."""
    logits = logits.float() / temperature
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate on the sampled tokens."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return (torch.exp(-log_ratio) - 1) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def sequence_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """The critic-free algorithms' reward of a whole response: its score minus beta * its summed KL."""
    return scores - kl_coef * (kl * mask).sum(dim=1)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Each response's reward minus the mean reward of the other k-1 responses to its prompt."""
    groups = rewards.view(-1, k)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)
    return (groups - others).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, k: int, scale: bool, eps: float = 1e-4) -> torch.Tensor:
    """Each response's reward minus its group's mean, divided by the group's std when `scale` (a group
    whose rewards are all equal then gets advantage 0, not a division by zero)."""
    groups = rewards.view(-1, k)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def remax_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor) -> torch.Tensor:
    """Each response's reward minus the reward of the greedy response to its prompt (one per group)."""
    k = rewards.shape[0] // greedy_rewards.shape[0]
    return rewards - greedy_rewards.repeat_interleave(k)


def whiten(x: torch.Tensor, total: Total = one_process) -> torch.Tensor:
    """Sequence advantages to mean 0 and std 1 over the batch (unbiased std)."""
    n = total(torch.tensor(float(x.numel()), dtype=x.dtype, device=x.device))
    mean = total(x.sum()) / n
    if n <= 1:
        return x - mean
    std = (total(((x - mean) ** 2).sum()) / (n - 1)).sqrt()
    return (x - mean) / (std + 1e-8)


def group_stats(rewards: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """How much the rewards within a prompt's group spread: a group with none teaches nothing."""
    std = rewards.view(-1, k).std(dim=1)
    return {"objective/group_reward_std": std.mean(), "objective/zero_spread_groups": (std == 0).float().mean()}


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """-beta * KL on every response token, plus the sequence score on the last valid token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over response tokens; returns (advantages, returns)."""
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running * mask[:, t]
        next_value = values[:, t]
    returns = advantages + values
    return advantages, returns


def aggregate(x: torch.Tensor, mask: torch.Tensor, normalisation: str = "token") -> torch.Tensor:
    """A per-token loss as one number: the mean over every valid token ("token"), or each response's
    mean over its tokens, then the mean over responses ("sequence", as DeepSeekMath's GRPO)."""
    if normalisation == "token":
        return masked_mean(x, mask)
    if normalisation == "sequence":
        mask = mask.to(x.dtype)
        return ((x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    raise ValueError(f"unknown loss normalisation {normalisation!r}; use 'token' or 'sequence'")


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_range: float, normalisation: str = "token"):
    """Clipped surrogate objective; returns (loss, stats). With one update per rollout the ratio is 1
    and its gradient is REINFORCE's."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = aggregate(torch.max(unclipped, clipped), mask, normalisation)
    with torch.no_grad():
        stats = {
            "policy/approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "val/ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(values, old_values, returns, mask, clip_range_value: float):
    """0.5 * max((v - R)^2, (v_clip - R)^2); returns (loss, stats)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        stats = {"val/clipfrac": masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).float(), mask)}
    return loss, stats
