"""The PPO loop: one loop for every variant (the variants differ only in `roles.PolicyStack`).

Each iteration, in order:
  1. rollout  - sample responses to a batch of prompts from the actor (KV cache, stop at EOS)
  2. score    - old log-probs and values, reference log-probs and reward-model scores (no grad);
                per-token KL folded into the reward, the score on the last token; GAE; whitening
  3. optimise - `ppo_epochs` passes of clipped policy and value losses over shuffled mini-batches
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hydra_core import checkpoint
from hydra_core.config import PPOConfig, save_config, to_dict
from hydra_core.data.batching import BatchStream
from hydra_core.data.splits import load_split
from hydra_core.data.tasks import verifier_for
from hydra_core.eval.gold import gold_accuracy
from hydra_core.memory import model_memory, peak_bytes, reset_peak
from hydra_core.models.generation import Decoding, generate
from hydra_core.models.reference import check_model
from hydra_core.plots import plot_curves
from hydra_core.ppo import algorithm as A
from hydra_core.ppo.roles import PolicyStack
from hydra_core.runtime import pick_device, seed_everything
from hydra_core.tracking.base import JsonlTracker, MultiTracker, Tracker

SUMMARY_FILE = "ppo_summary.json"
CURVES_FILE = "ppo_curves.png"
# settings a resumed run may change without changing what it computes
RESUMABLE = ("resume", "overwrite", "checkpoint_every", "eval_every", "greedy_eval_prompts", "kl_ceiling", "device",
             "output_dir", "trust_remote_code")
CURVES = ("objective/scores", "objective/kl", "objective/rlhf_reward", "loss/policy", "loss/value",
          "policy/clipfrac", "eval/gold_accuracy")


class NonFiniteError(RuntimeError):
    pass


def _check_finite(step: int, phase: str, last_checkpoint, **values: torch.Tensor) -> None:
    for name, value in values.items():
        if not torch.isfinite(value).all():
            kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                    else "no checkpoint was written yet")
            raise NonFiniteError(f"PPO step {step}, {phase}: {name} is not finite; stopping ({kept}). "
                                 "Lower the learning rates or the KL coefficient, or check the reward model.")


def build_optimizer(cfg: PPOConfig, stack: PolicyStack):
    """AdamW over the actor's and the critic's trained parameters (one group each, its own rate), and
    the learning-rate schedule over every optimizer step of the run."""
    optimizer = torch.optim.AdamW([{"params": stack.actor_params, "lr": cfg.learning_rate},
                                   {"params": stack.critic_params, "lr": cfg.critic_learning_rate}],
                                  weight_decay=0.0)
    total = cfg.steps * cfg.ppo_epochs * math.ceil(cfg.rollout_batch_size / cfg.mini_batch_size)
    if cfg.lr_schedule == "constant":
        schedule = lambda _: 1.0  # noqa: E731
    else:
        schedule = lambda update: 0.5 * (1.0 + math.cos(math.pi * min(update, total) / total))  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _mean(rows: list[dict]) -> dict[str, float]:
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in rows[0]}


def ppo_iteration(cfg: PPOConfig, stack: PolicyStack, prompts, optimizer, scheduler, step: int,
                  last_checkpoint) -> dict[str, float]:
    device = stack.device
    timings, peaks = {}, {}

    # 1. rollout
    reset_peak(device)
    t0 = time.perf_counter()
    with stack.generator() as actor:
        decoding = Decoding(max_new_tokens=cfg.max_new_tokens, greedy=False, temperature=cfg.temperature,
                            top_k=cfg.top_k, top_p=cfg.top_p)
        rollout = generate(actor, [p.prompt for p in prompts], decoding, max_prompt_length=cfg.max_prompt_length,
                           batch_size=len(prompts))
    query, response = rollout.query_ids.to(device), rollout.response_ids.to(device)
    resp_mask = rollout.response_mask.to(device)
    ids = torch.cat([query, response], dim=1)
    mask = torch.cat([rollout.query_mask.to(device), resp_mask], dim=1)
    P, R = query.shape[1], response.shape[1]
    response_slice = (slice(None), slice(P - 1, P + R - 1))  # positions that predict response tokens
    timings["generation"], peaks["generation"] = time.perf_counter() - t0, peak_bytes(device)

    # 2. score
    reset_peak(device)
    t0 = time.perf_counter()
    fmask = resp_mask.float()
    with torch.no_grad():
        out = stack.actor_forward(ids, mask, response_slice, with_values=stack.shared_actor_critic)
        old_logprobs = A.token_logprobs(out.logits, response, cfg.temperature)
        values_full = out.values if stack.shared_actor_critic else stack.critic_values(ids, mask)
        old_values = values_full[response_slice].float()
        ref_logits, scores = stack.reference_and_scores(ids, mask, response_slice)
        ref_logprobs = A.token_logprobs(ref_logits, response, cfg.temperature)
        scores = scores.float() - cfg.missing_eos_penalty * (~rollout.ended.to(device)).float()
        kl = A.kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator) * fmask
        _check_finite(step, "scoring", last_checkpoint, reward=scores, kl=kl)
        rewards = A.shaped_rewards(scores, kl, fmask, cfg.kl_coef)
        advantages, returns = A.gae(rewards, old_values, fmask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = A.masked_whiten(advantages, fmask)
    timings["scoring"], peaks["scoring"] = time.perf_counter() - t0, peak_bytes(device)

    # 3. optimise
    reset_peak(device)
    t0 = time.perf_counter()
    batch_size = len(prompts)
    stats = []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(batch_size)
        for start in range(0, batch_size, cfg.mini_batch_size):
            mb = order[start:start + cfg.mini_batch_size].to(device)
            mb_ids, mb_mask, mb_fmask = ids[mb], mask[mb], fmask[mb]
            out = stack.actor_forward(mb_ids, mb_mask, response_slice, with_values=stack.shared_actor_critic)
            logprobs = A.token_logprobs(out.logits, response[mb], cfg.temperature)
            pg_loss, pg_stats = A.policy_loss(logprobs, old_logprobs[mb], advantages[mb], mb_fmask, cfg.clip_range)
            if stack.shared_actor_critic:  # one pass gave both heads: one loss, one backward
                values = out.values[response_slice].float()
                vf_loss, vf_stats = A.value_loss(values, old_values[mb], returns[mb], mb_fmask, cfg.clip_range_value)
                _check_finite(step, "training", last_checkpoint, policy_loss=pg_loss, value_loss=vf_loss)
                (pg_loss + cfg.value_loss_coef * vf_loss).backward()
            else:  # backward each role before the next forward, so one graph lives at a time
                _check_finite(step, "training", last_checkpoint, policy_loss=pg_loss)
                pg_loss.backward()
                values = stack.critic_values(mb_ids, mb_mask)[response_slice].float()
                vf_loss, vf_stats = A.value_loss(values, old_values[mb], returns[mb], mb_fmask, cfg.clip_range_value)
                _check_finite(step, "training", last_checkpoint, value_loss=vf_loss)
                vf_loss.backward()
            for group in optimizer.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats.append({"loss/policy": pg_loss.detach(), "loss/value": vf_loss.detach(), **pg_stats, **vf_stats})
    timings["training"], peaks["training"] = time.perf_counter() - t0, peak_bytes(device)

    seq_kl = kl.sum(dim=1)
    step_s = sum(timings.values())
    metrics = {
        "objective/scores": scores.mean().item(),
        "objective/kl": seq_kl.mean().item(),
        "objective/rlhf_reward": (scores - cfg.kl_coef * seq_kl).mean().item(),
        "objective/entropy": (-old_logprobs * fmask).sum(dim=1).mean().item(),
        "val/mean": A.masked_mean(old_values, fmask).item(),
        "val/eos_rate": rollout.ended.float().mean().item(),
        "val/response_length": fmask.sum(dim=1).mean().item(),
        **_mean(stats),
        "lr/actor": optimizer.param_groups[0]["lr"],
        "lr/critic": optimizer.param_groups[1]["lr"],
        "time/step_s": step_s,
        "time/s_per_sample": step_s / batch_size,
        "time/tokens_per_s": mask.sum().item() / step_s,
        "memory/peak_bytes": max(peaks.values()),
    }
    metrics.update({f"time/{phase}_s": s for phase, s in timings.items()})
    metrics.update({f"memory/peak_{phase}_bytes": b for phase, b in peaks.items()})
    return metrics


def _describe(step: int, steps: int, m: dict) -> str:
    return (f"step {step}/{steps} | score {m['objective/scores']:+.3f} | kl {m['objective/kl']:.4f} | "
            f"clipfrac {m['policy/clipfrac']:.3f} | eos {m['val/eos_rate']:.2f} | "
            f"gen {m['time/generation_s']:.1f}s score {m['time/scoring_s']:.1f}s train {m['time/training_s']:.1f}s | "
            f"{1000 * m['time/s_per_sample']:.1f} ms/sample | peak {m['memory/peak_bytes'] / 2**20:.0f} MiB"
            + (f" | gold {m['eval/gold_accuracy']:.3f}" if "eval/gold_accuracy" in m else ""))


def run_ppo(cfg: PPOConfig, tracker: Tracker | None = None, progress: bool = True) -> dict:
    """Run PPO per `cfg`; writes the policy, `ppo_summary.json`, metrics and curves to `output_dir`."""
    device = pick_device(cfg.device or None)
    check_model(cfg.model, "model")
    if cfg.reward_model:
        check_model(cfg.reward_model, "reward_model")
    seed_everything(cfg.seed)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    local = JsonlTracker(out_dir)
    tracker = MultiTracker(local, tracker)
    save_config(cfg, out_dir)
    tracker.log_params(to_dict(cfg))

    prompts = BatchStream(load_split(cfg.data, "prompts_train"), cfg.rollout_batch_size, cfg.seed)
    verifier = verifier_for(cfg.data)
    eval_prompts = load_split(cfg.data, "prompts_eval")[: cfg.greedy_eval_prompts] if verifier else []
    stack = PolicyStack(cfg, device)
    optimizer, scheduler = build_optimizer(cfg, stack)
    trainable = stack.named_trainable()

    def gold() -> float:
        with stack.generator() as actor:
            return gold_accuracy(actor, eval_prompts, verifier, cfg.max_new_tokens, cfg.max_prompt_length)

    start, history, last_checkpoint = 0, [], None
    if cfg.resume and (last_checkpoint := checkpoint.latest(out_dir)):
        start, history = checkpoint.load(last_checkpoint, trainable, optimizer, scheduler, {"prompts": prompts},
                                         to_dict(cfg), RESUMABLE)
        print(f"resumed from {last_checkpoint} (step {start})")
    local.keep_until(start if last_checkpoint else None)  # as SFT: the rows from here on are this run's
    summary: dict = {"variant": cfg.variant, "steps": cfg.steps}
    if verifier:
        before = history[0]["eval/gold_accuracy_before"] if history else gold()
        summary["eval/gold_accuracy_before"] = before
        if not history:
            tracker.log_metrics({"eval/gold_accuracy_before": before, "eval/gold_accuracy": before}, 0)
            history.append({"step": 0, "eval/gold_accuracy_before": before, "eval/gold_accuracy": before})

    bar = tqdm(total=cfg.steps, initial=start, desc=f"PPO ({cfg.variant})", disable=not progress)
    started = time.perf_counter()
    for step in range(start + 1, cfg.steps + 1):
        metrics = ppo_iteration(cfg, stack, prompts.next(), optimizer, scheduler, step, last_checkpoint)
        if metrics["objective/kl"] > cfg.kl_ceiling:
            warnings.warn(f"PPO step {step}: KL {metrics['objective/kl']:.3f} is past the ceiling {cfg.kl_ceiling}; "
                          "the policy is drifting from the reference (raise --kl-coef?)", stacklevel=1)
        if verifier and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            metrics["eval/gold_accuracy"] = gold()
        tracker.log_metrics(metrics, step)
        history.append({"step": step, **metrics})
        bar.update(1)
        bar.write(_describe(step, cfg.steps, metrics))
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            # never let a poisoned state replace the last good checkpoint
            _check_finite(step, "checkpoint", last_checkpoint,
                          weights=torch.stack([p.detach().float().abs().max() for p in trainable.values()]))
            last_checkpoint = checkpoint.save(out_dir, step, trainable, optimizer, scheduler, {"prompts": prompts},
                                              history, to_dict(cfg))
    bar.close()

    if verifier and "eval/gold_accuracy" not in history[-1]:
        history[-1]["eval/gold_accuracy"] = gold()
        tracker.log_metrics({"eval/gold_accuracy": history[-1]["eval/gold_accuracy"]}, cfg.steps)
    if verifier:
        summary["eval/gold_accuracy"] = history[-1]["eval/gold_accuracy"]
    memory = model_memory(stack.unique_modules(), [optimizer], trainable=list(trainable.values()))
    tracker.log_metrics(memory, cfg.steps)
    summary.update({k: v for k, v in history[-1].items() if k != "step"})
    summary.update(memory)
    summary["train_seconds_this_run"] = time.perf_counter() - started
    with stack.generator():
        stack.policy_model.save(out_dir, heads=(), kind="ppo-policy", variant=cfg.variant, sft_model=cfg.model,
                                data=cfg.data)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    if plot_curves(history, CURVES, out_dir / CURVES_FILE, title=f"PPO ({cfg.variant})"):
        tracker.log_artifact(out_dir / CURVES_FILE)
    return summary
