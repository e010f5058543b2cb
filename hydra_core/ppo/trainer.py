"""The PPO stage: the RL loop of `iteration.ppo_iteration` run for `steps` iterations, with what a stage
around it needs: the memory budget's batch search before training (`budget`), exact resume from a checkpoint,
greedy gold accuracy, metrics and curves, and the saved policy."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hydra_core import checkpoint
from hydra_core.checkpoint_store import CheckpointStore, announce_resume
from hydra_core.config.fields import to_dict
from hydra_core.config.files import save_config
from hydra_core.config.settings import ALGORITHM_NAMES, PPOConfig, run_label
from hydra_core.data.batching import BatchStream
from hydra_core.data.encoding import truncation, truncation_params
from hydra_core.data.splits import load_split
from hydra_core.data.tasks import verifier_for
from hydra_core.distributed import Processes, full_tensor
from hydra_core.eval.gold import gold_accuracy
from hydra_core.memory import model_memory, stage_peak_bytes
from hydra_core.models.lora import check_lora_targets, wrapped_modules
from hydra_core.models.quantization import check_quantization
from hydra_core.models.reference import check_model
from hydra_core.plots import plot_curves
from hydra_core.ppo.budget import fit_rollout_batch
from hydra_core.ppo.iteration import build_optimizer, check_finite, ppo_iteration
from hydra_core.ppo.roles import PolicyStack, adapter_sources
from hydra_core.ppo.rollouts import make_rollouts
from hydra_core.runtime import keep_freed_memory, pick_device, seed_everything
from hydra_core.tracking.base import JsonlTracker, MultiTracker, Tracker

SUMMARY_FILE = "ppo_summary.json"
CURVES_FILE = "ppo_curves.png"
# settings a resumed run may change without changing what it computes
RESUMABLE = ("resume", "overwrite", "checkpoint_every", "checkpoint_uri", "eval_every", "greedy_eval_prompts", "kl_ceiling", "device",
             "output_dir", "trust_remote_code", "gradient_checkpointing")
CURVES = ("objective/scores", "objective/kl", "objective/rlhf_reward", "loss/policy", "loss/value", "loss/kl",
          "policy/clipfrac", "objective/group_reward_std", "rollout/logprob_gap", "eval/gold_accuracy")


def _describe(step: int, steps: int, m: dict) -> str:
    return (f"step {step}/{steps} | score {m['objective/scores']:+.3f} | kl {m['objective/kl']:.4f} | "
            f"clipfrac {m['policy/clipfrac']:.3f} | eos {m['val/eos_rate']:.2f} | "
            f"gen {m['time/generation_s']:.1f}s score {m['time/scoring_s']:.1f}s train {m['time/training_s']:.1f}s | "
            f"{1000 * m['time/s_per_sample']:.1f} ms/sample | peak {m['memory/peak_bytes'] / 2**20:.0f} MiB"
            + (f" | logprob gap {m['rollout/logprob_gap']:.2e}" if "rollout/logprob_gap" in m else "")
            + (f" | gold {m['eval/gold_accuracy']:.3f}" if "eval/gold_accuracy" in m else ""))


def run_ppo(cfg: PPOConfig, tracker: Tracker | None = None, progress: bool = True) -> dict:
    """Run PPO per `cfg`; writes the policy, `ppo_summary.json`, metrics and curves to `output_dir`.
    Returns the summary on the main process and {} on the others of a data-parallel run."""
    processes = Processes.join(pick_device(cfg.device or None))
    device, main = processes.device, processes.main
    if device.type == "cpu":
        keep_freed_memory()  # as SFT: every pass's activations would otherwise page-fault back in
    check_model(cfg.model, "model")
    if cfg.reward_model:
        check_model(cfg.reward_model, "reward_model")
    for path in adapter_sources(cfg):
        check_lora_targets(path, cfg.lora_target_modules, cfg.trust_remote_code)
    check_quantization(cfg.quantize_backbone, device)
    seed_everything(cfg.seed)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget_search = None
    if cfg.memory_budget:  # the paper's latency lever: the largest rollout batch that fits, found before training
        cfg, budget_search = fit_rollout_batch(cfg, out_dir, progress=progress)
    local = JsonlTracker(out_dir) if main else None
    tracker = MultiTracker(local, tracker) if main else Tracker()
    if main:
        save_config(cfg, out_dir)
    tracker.log_params({**to_dict(cfg), "processes": processes.world})
    if budget_search:
        tracker.log_params({"budget/rollout_batch_size": cfg.rollout_batch_size})

    train_prompts = load_split(cfg.data, "prompts_train")
    prompts = BatchStream(train_prompts, cfg.rollout_batch_size // processes.world, cfg.seed, processes.rank,
                          processes.world)
    verifier = verifier_for(cfg.data)
    # greedy gold accuracy: the main process alone, on the whole eval set; with sharded models every process
    # runs the same generations beside it (each step gathers weights from all of them), the main one reports
    evaluates = verifier is not None and (main or cfg.shard_backbone)
    eval_prompts = load_split(cfg.data, "prompts_eval")[: cfg.greedy_eval_prompts] if evaluates else []
    stack = PolicyStack(cfg, device)
    processes.broadcast_parameters(stack.actor_params + stack.critic_params)
    if not main:  # its own rollouts: a random stream of its own from here (the adapters' init drew the same)
        seed_everything(cfg.seed + 7919 * processes.rank)
    # before any rollout: renders every prompt once (one the chat template cannot render stops here)
    cut = {"prompts_train": truncation(stack.policy_model.tokenizer, train_prompts, cfg.max_prompt_length)}
    optimizer, scheduler = build_optimizer(cfg, stack)
    trainable = stack.named_trainable()

    # the engine's memory is freed once training ends, whichever way it ends
    with contextlib.closing(make_rollouts(cfg, stack)) as rollouts:
        def gold() -> float:
            out = gold_accuracy(rollouts.generate, eval_prompts, verifier, cfg.max_new_tokens, cfg.max_prompt_length)
            rollouts.sleep()
            return out

        store = CheckpointStore(cfg.checkpoint_uri, out_dir)
        if main:
            store.pull()
        processes.barrier()
        start, history, last_checkpoint = 0, [], None
        if (cfg.resume or store.durable) and (last_checkpoint := checkpoint.latest(store.local)):
            start, history = checkpoint.load(last_checkpoint, trainable, optimizer, scheduler, {"prompts": prompts},
                                             to_dict(cfg), RESUMABLE, processes.rank, processes.world)
            if main:
                announce_resume(tracker, last_checkpoint, start)
        if main:  # the rows after the checkpoint are redone below; a fresh run keeps none of an earlier one's
            local.start_from(history)
        label = run_label(cfg.variant, cfg.algorithm)
        summary: dict = {"variant": label, "layout": cfg.variant, "algorithm": cfg.algorithm, "steps": cfg.steps,
                         "samples_per_prompt": cfg.samples_per_prompt, "loss_normalisation": cfg.loss_normalisation,
                         "mixed_precision": stack.precision, "processes": processes.world, "truncation": cut,
                         **wrapped_modules(stack.unique_modules())}
        if budget_search:
            summary["memory_budget_search"] = budget_search
        if evaluates:
            before = history[0]["eval/gold_accuracy_before"] if history else gold()
            summary["eval/gold_accuracy_before"] = before
            if not history:
                tracker.log_metrics({"eval/gold_accuracy_before": before, "eval/gold_accuracy": before}, 0)
                history.append({"step": 0, "eval/gold_accuracy_before": before, "eval/gold_accuracy": before})

        name = f"{ALGORITHM_NAMES[cfg.algorithm]} ({cfg.variant})"
        bar = tqdm(total=cfg.steps, initial=start, desc=name, disable=not (progress and main))
        started = time.perf_counter()
        for step in range(start + 1, cfg.steps + 1):
            metrics = ppo_iteration(cfg, stack, prompts.next(), optimizer, scheduler, step, last_checkpoint, processes,
                                    rollouts)
            if metrics["objective/kl"] > cfg.kl_ceiling and main:
                warnings.warn(f"PPO step {step}: KL {metrics['objective/kl']:.3f} is past the ceiling "
                              f"{cfg.kl_ceiling}; the policy is drifting from the reference (raise --kl-coef?)",
                              stacklevel=1)
            if evaluates and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                metrics["eval/gold_accuracy"] = gold()
            tracker.log_metrics(metrics, step)
            history.append({"step": step, **metrics})
            bar.update(1)
            if main:
                bar.write(_describe(step, cfg.steps, metrics))
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                # never let a poisoned state replace the last good checkpoint; a sharded tensor is looked at whole,
                # so that every process stops alike (and a process's shard may be empty)
                largest = [full_tensor(p.detach()).float().abs().max() for p in trainable.values()]
                check_finite(step, "checkpoint", last_checkpoint, weights=torch.stack(largest))
                rng = processes.gather(checkpoint.rng_state())  # every process's, for an exact resume
                if main or cfg.shard_backbone:  # sharded, every process writes its own shards
                    last_checkpoint = checkpoint.save(store.local, step, trainable, optimizer, scheduler,
                                                      {"prompts": prompts}, history, to_dict(cfg), rng)
                if main:  # its save returns once every process's shards are written
                    store.push(last_checkpoint)
        bar.close()
        if evaluates and "eval/gold_accuracy" not in history[-1]:
            history[-1]["eval/gold_accuracy"] = gold()
            tracker.log_metrics({"eval/gold_accuracy": history[-1]["eval/gold_accuracy"]}, cfg.steps)
        engine_memory = {"memory/engine_bytes": rollouts.memory_bytes} if rollouts.memory_bytes else {}
    train_seconds = time.perf_counter() - started
    with stack.saved_policy(main) as policy:  # every process enters: a sharded adapter is gathered from all
        if main:
            policy.save(out_dir, heads=(), kind="ppo-policy", variant=label, sft_model=cfg.model, data=cfg.data)
    if not main:
        return {}

    if verifier:
        summary["eval/gold_accuracy"] = history[-1]["eval/gold_accuracy"]
    memory = {**model_memory(stack.unique_modules(), [optimizer], trainable=list(trainable.values())), **engine_memory}
    summary.update({k: v for k, v in history[-1].items() if k != "step"})
    summary.update(memory)
    summary["train_seconds_this_run"] = train_seconds
    # figures of the finished stage, one value each: params, not one-point charts
    tracker.log_params({**memory, "memory/stage_peak_bytes": stage_peak_bytes(history),
                        "time/train_seconds": round(summary["train_seconds_this_run"], 1), **truncation_params(cut)})
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    if plot_curves(history, CURVES, out_dir / CURVES_FILE, title=name):
        tracker.log_artifact(out_dir / CURVES_FILE)
    return summary
