"""One RL iteration: one loop for every memory variant (they differ only in `roles.PolicyStack`) and every
algorithm (they differ only in how step 2 estimates advantages, and whether there is a critic).

Each iteration, in order:
  1. rollout  - sample `samples_per_prompt` responses to each prompt of a batch from the actor (KV
                cache, stop at EOS); ReMax also the greedy response to each prompt. HF generate on the
                trainer's model, or vLLM's engine with the actor's adapter (`rollouts`): either way the
                trainer computes every log-prob below itself
  2. score    - reference log-probs and reward-model scores (no grad; one adapters-off pass in hydra
                and j-hydra), then the old policy's log-probs (and values, with a critic) and the
                advantages: PPO folds the per-token KL into the reward, adds the score on the last token
                and runs GAE; RLOO, GRPO and ReMax give each response's tokens its sequence reward minus
                a baseline (`estimate_advantages`). With one update per rollout (1 epoch, 1 mini-batch)
                the old log-probs are the first training forward's: no pass of their own
  3. optimise - `ppo_epochs` passes of the clipped policy loss (plus the value loss with a critic,
                the k3 KL term for GRPO with `grpo_kl loss`) over shuffled mini-batches

Data-parallel (`torchrun` / `accelerate launch`, N processes): `rollout_batch_size` and `mini_batch_size`
are global; each process samples, scores and trains on its 1/N of the prompts (a prompt's k responses
stay together), the trained parameters' gradients are averaged after each mini-batch's backward, advantage
whitening and the reported metrics use statistics over all processes, and only the main process writes.
With `shard_backbone` each model is also sharded over the processes (FSDP2, `roles.PolicyStack`): every
process then runs the same passes in the same order, the greedy evaluation included.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch

from hydra_core.config.settings import PPOConfig
from hydra_core.distributed import Processes
from hydra_core.memory import allocated_bytes, peak_bytes, peak_with_engine, reset_peak
from hydra_core.models.generation import Decoding
from hydra_core.ppo import algorithm as A
from hydra_core.ppo.roles import PolicyStack
from hydra_core.ppo.rollouts import HFRollouts, logprob_gap




class NonFiniteError(RuntimeError):
    pass


def check_finite(step: int, phase: str, last_checkpoint, **values: torch.Tensor) -> None:
    for name, value in values.items():
        if not torch.isfinite(value).all():
            kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                    else "no checkpoint was written yet")
            raise NonFiniteError(f"PPO step {step}, {phase}: {name} is not finite; stopping ({kept}). "
                                 "Lower the learning rates or the KL coefficient, or check the reward model.")


def build_optimizer(cfg: PPOConfig, stack: PolicyStack):
    """AdamW over the actor's and the critic's trained parameters (one group each, its own rate; no
    critic group without a critic), and the learning-rate schedule over every optimizer step of the run."""
    groups = [{"params": stack.actor_params, "lr": cfg.learning_rate}]
    if stack.critic_params:
        groups.append({"params": stack.critic_params, "lr": cfg.critic_learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    responses = cfg.rollout_batch_size * cfg.samples_per_prompt
    total = cfg.steps * cfg.ppo_epochs * math.ceil(responses / mini_batch_responses(cfg, responses))
    if cfg.lr_schedule == "constant":
        schedule = lambda _: 1.0  # noqa: E731
    else:
        schedule = lambda update: 0.5 * (1.0 + math.cos(math.pi * min(update, total) / total))  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _mean(rows: list[dict]) -> dict[str, float]:
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in rows[0]}


def estimate_advantages(cfg: PPOConfig, scores, kl, mask, values=None, greedy_scores=None, total=A.one_process):
    """Step 2's advantages for `cfg.algorithm`, per response token; and PPO's returns (None otherwise).
    `total` sums over the data-parallel processes, for whitening over the whole batch."""
    if cfg.algorithm == "ppo":
        rewards = A.shaped_rewards(scores, kl, mask, cfg.kl_coef)
        advantages, returns = A.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        return (A.masked_whiten(advantages, mask, total) if cfg.whiten_advantages else advantages), returns
    kl_in_reward = not (cfg.algorithm == "grpo" and cfg.grpo_kl == "loss")
    rewards = A.sequence_rewards(scores, kl, mask, cfg.kl_coef if kl_in_reward else 0.0)
    if cfg.algorithm == "rloo":
        advantages = A.rloo_advantages(rewards, cfg.samples_per_prompt)
    elif cfg.algorithm == "grpo":
        advantages = A.grpo_advantages(rewards, cfg.samples_per_prompt, cfg.grpo_scale_rewards)
    elif cfg.algorithm == "remax":
        advantages = A.remax_advantages(rewards, greedy_scores)
    else:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}")
    if cfg.whiten_advantages and cfg.algorithm != "grpo":  # GRPO's advantages are normalised in their group
        advantages = A.whiten(advantages, total)
    return advantages[:, None] * mask, None


def _sequences(rollout, device):
    """Prompt + response ids and mask, the response and its mask, and the positions that predict it."""
    query, response = rollout.query_ids.to(device), rollout.response_ids.to(device)
    resp_mask = rollout.response_mask.to(device)
    ids = torch.cat([query, response], dim=1)
    mask = torch.cat([rollout.query_mask.to(device), resp_mask], dim=1)
    P, R = query.shape[1], response.shape[1]
    return ids, mask, response, resp_mask.float(), (slice(None), slice(P - 1, P + R - 1))


def _penalised(cfg: PPOConfig, scores: torch.Tensor, rollout) -> torch.Tensor:
    """Reward-model scores in fp32, less the missing-EOS penalty for responses cut at the cap."""
    return scores.float() - cfg.missing_eos_penalty * (~rollout.ended.to(scores.device)).float()


def mini_batch_responses(cfg: PPOConfig, responses: int) -> int:
    """Responses per optimizer step: `mini_batch_size`, where 0 (or more than a rollout) means the whole rollout."""
    return min(cfg.mini_batch_size or responses, responses)


def _reference_and_scores(cfg: PPOConfig, stack: PolicyStack, ids, mask, response, response_slice):
    """The reference's log-probs of the response tokens and the reward model's scores; the reference's
    logits (batch x response x vocabulary, the largest tensor of the pass) are not kept into training."""
    ref_logits, scores = stack.reference_and_scores(ids, mask, response_slice)
    return A.token_logprobs(ref_logits, response, cfg.temperature), scores


def _policy_outputs(cfg: PPOConfig, stack: PolicyStack, ids, mask, response, response_slice):
    """The actor's log-probs of the response tokens; and, where one pass gives both heads (j-hydra), the
    critic's values on them (else None)."""
    out = stack.actor_forward(ids, mask, response_slice, with_values=stack.shared_actor_critic)
    values = out.values[response_slice].float() if stack.shared_actor_critic else None
    return A.token_logprobs(out.logits, response, cfg.temperature), values


def rollout_seed(seed: int, step: int, rank: int = 0) -> int:
    """The sampling seed of step `step`'s rollout on process `rank`, for an engine that seeds each request (vLLM):
    a resumed run samples what the uninterrupted one did."""
    return (seed * 1_000_003 + step * 65_537 + rank * 7_919) % 2**31


def ppo_iteration(cfg: PPOConfig, stack: PolicyStack, prompts, optimizer, scheduler, step: int,
                  last_checkpoint, processes: Processes | None = None, rollouts=None) -> dict[str, float]:
    """One iteration on this process's `prompts`; the metrics are over all processes. `rollouts` samples step 1
    (`ppo.rollouts`; default: HF generate on the actor)."""
    processes = processes or Processes(device=stack.device)
    rollouts = rollouts or HFRollouts(stack)
    device = stack.device
    k = cfg.samples_per_prompt
    kl_in_loss = cfg.algorithm == "grpo" and cfg.grpo_kl == "loss"
    timings, peaks = {}, {}

    # 1. rollout (by the trainer's model or an engine beside it, which then sleeps until the next rollout)
    reset_peak(device)
    t0, resident = time.perf_counter(), allocated_bytes(device)
    sampling = Decoding(max_new_tokens=cfg.max_new_tokens, greedy=False, temperature=cfg.temperature,
                        top_k=cfg.top_k, top_p=cfg.top_p)
    texts = [p.prompt for p in prompts for _ in range(k)]  # a prompt's k responses are adjacent rows
    seed = rollout_seed(cfg.seed, step, processes.rank)
    rollout = rollouts.generate(texts, sampling, max_prompt_length=cfg.max_prompt_length, batch_size=len(texts),
                                seed=seed)
    greedy = (rollouts.generate([p.prompt for p in prompts], replace(sampling, greedy=True),
                                max_prompt_length=cfg.max_prompt_length, batch_size=len(prompts), seed=seed)
              if cfg.algorithm == "remax" else None)
    rollouts.sleep()
    ids, mask, response, fmask, response_slice = _sequences(rollout, device)
    timings["generation"] = time.perf_counter() - t0
    peaks["generation"] = peak_with_engine(device, peak_bytes(device), resident, rollouts.memory_bytes)

    # 2. score: the reference log-probs and the rewards (one adapters-off pass in hydra and j-hydra)
    reset_peak(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref_logprobs, scores = _reference_and_scores(cfg, stack, ids, mask, response, response_slice)
        scores = _penalised(cfg, scores, rollout)
        greedy_scores = None
        if greedy is not None:
            greedy_ids, greedy_mask = _sequences(greedy, device)[:2]
            greedy_scores = _penalised(cfg, stack.scores(greedy_ids, greedy_mask), greedy)
    timings["scoring"], peaks["scoring"] = time.perf_counter() - t0, peak_bytes(device)

    # 2b. the old policy: its log-probs (and values) on the rollout. With one update per rollout the first
    #     training forward runs this very policy on the very rows, so it gives them and no pass runs here.
    #     A separate critic's values always take a pass of their own: from its training forward they
    #     would keep the actor's and the critic's graphs alive together.
    reset_peak(device)
    t0 = time.perf_counter()
    batch_size = len(texts)  # this process's share of the rollout
    mini_batch = mini_batch_responses(cfg, batch_size * processes.world) // processes.world
    reuse = cfg.reuse_training_forward and cfg.ppo_epochs == 1 and mini_batch == batch_size
    old_logprobs = old_values = None
    with torch.no_grad():
        if not reuse:
            old_logprobs, old_values = _policy_outputs(cfg, stack, ids, mask, response, response_slice)
        if stack.critic and not stack.shared_actor_critic:
            old_values = stack.critic_values(ids, mask)[response_slice].float()
    timings["old_policy"], peaks["old_policy"] = time.perf_counter() - t0, peak_bytes(device)

    def advantages_from(old_logprobs: torch.Tensor):
        """The end of step 2, once the old log-probs are known: the KL and the advantages."""
        kl = A.kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator) * fmask
        check_finite(step, "scoring", last_checkpoint, reward=scores, kl=kl)
        gap = logprob_gap(rollout.logprobs, old_logprobs, fmask)  # the engine's policy against the trained one
        return kl, gap, *estimate_advantages(cfg, scores, kl, fmask, old_values, greedy_scores, processes.sum)

    if not reuse:
        kl, gap, advantages, returns = advantages_from(old_logprobs)

    # 3. optimise
    reset_peak(device)
    t0 = time.perf_counter()
    stats = []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(batch_size) if mini_batch < batch_size else torch.arange(batch_size)
        for start in range(0, batch_size, mini_batch):
            mb = order[start:start + mini_batch].to(device)
            mb_ids, mb_mask, mb_fmask = ids[mb], mask[mb], fmask[mb]
            logprobs, values = _policy_outputs(cfg, stack, mb_ids, mb_mask, response[mb], response_slice)
            if old_logprobs is None:  # reuse: this forward is the old policy's (2b)
                old_logprobs = logprobs.detach()
                old_values = values.detach() if stack.shared_actor_critic else old_values
                with torch.no_grad():
                    kl, gap, advantages, returns = advantages_from(old_logprobs)
            pg_loss, mb_stats = A.policy_loss(logprobs, old_logprobs[mb], advantages[mb], mb_fmask, cfg.clip_range,
                                              cfg.loss_normalisation)
            actor_loss = pg_loss
            mb_stats["loss/policy"] = pg_loss.detach()
            if kl_in_loss:  # GRPO as DeepSeekMath: the k3 KL to the reference as a term of the loss
                kl_loss = A.aggregate(A.kl_penalty(logprobs, ref_logprobs[mb], "k3"), mb_fmask, cfg.loss_normalisation)
                actor_loss = actor_loss + cfg.kl_coef * kl_loss
                mb_stats["loss/kl"] = kl_loss.detach()
            if stack.critic is None:
                check_finite(step, "training", last_checkpoint, policy_loss=actor_loss)
                actor_loss.backward()
            elif stack.shared_actor_critic:  # one pass gave both heads: one loss, one backward
                vf_loss, vf_stats = A.value_loss(values, old_values[mb], returns[mb], mb_fmask, cfg.clip_range_value)
                check_finite(step, "training", last_checkpoint, policy_loss=actor_loss, value_loss=vf_loss)
                (actor_loss + cfg.value_loss_coef * vf_loss).backward()
            else:  # backward each role before the next forward, so one graph lives at a time
                check_finite(step, "training", last_checkpoint, policy_loss=actor_loss)
                actor_loss.backward()
                values = stack.critic_values(mb_ids, mb_mask)[response_slice].float()
                vf_loss, vf_stats = A.value_loss(values, old_values[mb], returns[mb], mb_fmask, cfg.clip_range_value)
                check_finite(step, "training", last_checkpoint, value_loss=vf_loss)
                vf_loss.backward()
            if stack.critic:
                mb_stats.update({"loss/value": vf_loss.detach(), **vf_stats})
            processes.average_gradients(stack.actor_params + stack.critic_params)
            for group in optimizer.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats.append(mb_stats)
    rollouts.policy_updated()
    timings["training"], peaks["training"] = time.perf_counter() - t0, peak_bytes(device)

    seq_kl = kl.sum(dim=1)
    step_s = sum(timings.values())
    metrics = {
        "objective/scores": scores.mean().item(),
        "objective/kl": seq_kl.mean().item(),
        "objective/rlhf_reward": (scores - cfg.kl_coef * seq_kl).mean().item(),
        "objective/entropy": (-old_logprobs * fmask).sum(dim=1).mean().item(),
        "val/eos_rate": rollout.ended.float().mean().item(),
        "val/response_length": fmask.sum(dim=1).mean().item(),
        **_mean(stats),
        "lr/actor": optimizer.param_groups[0]["lr"],
        "time/step_s": step_s,
        "memory/peak_bytes": max(peaks.values()),
    }
    if stack.critic:
        metrics.update({"val/mean": A.masked_mean(old_values, fmask).item(),
                        "lr/critic": optimizer.param_groups[1]["lr"]})
    if k > 1:
        metrics.update({name: v.item() for name, v in A.group_stats(scores, k).items()})
    if greedy_scores is not None:
        metrics["objective/greedy_scores"] = greedy_scores.mean().item()
    if gap is not None:
        metrics["rollout/logprob_gap"] = gap.item()
    metrics.update({f"time/{phase}_s": s for phase, s in timings.items()})
    metrics.update({f"memory/peak_{phase}_bytes": b for phase, b in peaks.items()})
    # the means over the processes; the slowest one sets the pace and the fullest one the peak
    metrics = processes.reduce_metrics(metrics, maximum=("time/", "memory/"))
    tokens = processes.sum(mask.sum()).item()
    metrics["time/s_per_sample"] = metrics["time/step_s"] / (batch_size * processes.world)
    metrics["time/tokens_per_s"] = tokens / metrics["time/step_s"]
    return metrics
