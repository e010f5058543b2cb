"""One training loop for SFT, reward modelling and Hydra-SFT.

`sft` trains the LM head on demonstrations, `rm` the reward head on preference pairs, `hydra`
both on one backbone: the demonstrations and the pairs go through the backbone in a single
forward pass (one batch, demo rows first) so the two losses share every activation, and DDP sees
one forward per backward. `--checkpoint-every` writes resumable state (`hydra_core.checkpoint`)
and `--resume` continues from the newest, reproducing the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from hydra_core import checkpoint
from hydra_core.checkpoint_store import CheckpointStore, announce_resume
from hydra_core.config.fields import to_dict
from hydra_core.config.files import save_config
from hydra_core.config.settings import SFTConfig
from hydra_core.data.batching import BatchStream
from hydra_core.data.encoding import IGNORE_INDEX, lm_batch, pair_batch, truncation, truncation_params
from hydra_core.data.splits import load_split
from hydra_core.data.tasks import verifier_for
from hydra_core.distributed import Processes
from hydra_core.eval.gold import gold_accuracy
from hydra_core.memory import model_memory, peak_bytes, stage_peak_bytes
from hydra_core.models.generation import generate
from hydra_core.models.hydra import HydraModel, load_hydra
from hydra_core.models.lora import add_lora, check_lora_targets, wrapped_modules
from hydra_core.models.reference import check_model
from hydra_core.plots import plot_curves
from hydra_core.runtime import keep_freed_memory, mixed_precision, seed_everything
from hydra_core.sft.metrics import demo_loss, lm_loss, pairwise_loss, reward_accuracy
from hydra_core.tracking.base import JsonlTracker, MultiTracker, Tracker

SUMMARY_FILE = "sft_summary.json"
CURVES_FILE = "sft_curves.png"
CURVES = ("train/loss", "train/lm_loss", "train/reward_loss", "eval/reward_accuracy", "eval/lm_loss", "train/lr")
# the splits each mode trains and evaluates on
READS = {"sft": ("demos_train", "demos_eval"), "rm": ("pairs_train", "pairs_eval"),
         "hydra": ("demos_train", "pairs_train", "demos_eval", "pairs_eval")}
# settings a resumed run may change without changing what it computes
RESUMABLE = ("resume", "overwrite", "checkpoint_every", "checkpoint_uri", "log_every", "eval_every", "eval_batch_size",
             "greedy_eval_prompts", "output_dir", "trust_remote_code")


class NonFiniteLossError(RuntimeError):
    pass


def _merge_rows(demo: dict, pairs: dict, pad_id: int) -> dict:
    """One batch of demo rows then pair rows, padded to a common width."""
    width = max(demo["input_ids"].shape[1], pairs["input_ids"].shape[1])

    def widen(t, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return {
        "input_ids": torch.cat([widen(demo["input_ids"], pad_id), widen(pairs["input_ids"], pad_id)]),
        "attention_mask": torch.cat([widen(demo["attention_mask"], 0), widen(pairs["attention_mask"], 0)]),
        "labels": widen(demo["labels"], IGNORE_INDEX),
    }


def _build_batch(cfg: SFTConfig, tokenizer, demos, pairs) -> dict:
    if cfg.mode == "sft":
        return lm_batch(tokenizer, demos, cfg.max_length)
    pb = pair_batch(tokenizer, pairs, cfg.max_length)
    if cfg.mode == "rm":
        return pb
    return _merge_rows(lm_batch(tokenizer, demos, cfg.max_length), pb, tokenizer.pad_token_id)


def _losses(cfg: SFTConfig, model, batch: dict, n_demos: int) -> dict[str, torch.Tensor]:
    out = model(
        batch["input_ids"],
        batch["attention_mask"],
        lm=cfg.mode != "rm",
        lm_select=slice(0, n_demos) if cfg.mode == "hydra" else None,
        reward=cfg.mode != "sft",
    )
    losses = {}
    if cfg.mode != "rm":
        losses["train/lm_loss"] = lm_loss(out.logits, batch["labels"])
    if cfg.mode != "sft":
        rewards = out.rewards if cfg.mode == "rm" else out.rewards[n_demos:]
        losses["train/reward_loss"] = pairwise_loss(rewards)
        chosen, rejected = rewards.detach().chunk(2)
        losses["train/reward_accuracy"] = (chosen > rejected).float().mean()
    losses["train/loss"] = losses.get("train/lm_loss", 0) + cfg.reward_loss_weight * losses.get("train/reward_loss", 0)
    return losses


def _evaluate(cfg: SFTConfig, model: HydraModel, data: dict) -> dict[str, float]:
    model.eval()
    metrics = {}
    if cfg.mode != "sft":
        metrics.update(reward_accuracy(model, data["pairs_eval"], cfg.max_length, cfg.eval_batch_size))
    if cfg.mode != "rm":
        metrics["eval/lm_loss"] = demo_loss(model, data["demos_eval"], cfg.max_length, cfg.eval_batch_size)
    model.train()
    return metrics


def run_sft(cfg: SFTConfig, tracker: Tracker | None = None, progress: bool = True) -> dict:
    """Train per `cfg`; writes the model, `sft_summary.json`, `metrics.jsonl` and the curves to
    `cfg.output_dir`. Returns the summary on the main process and {} on the others of a
    distributed run.
    """
    check_model(cfg.model, "model")
    if cfg.lora_rank:
        check_lora_targets(cfg.model, cfg.lora_target_modules, cfg.trust_remote_code)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if cfg.mode == "rm" else []
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        keep_freed_memory()
    precision = mixed_precision(cfg.mixed_precision, torch.device("cuda" if on_gpu else "cpu"))
    # Autocast is ours (below), not accelerate's: accelerate fixes the precision once per process,
    # so a second run_sft() in the same process could not choose another. cpu=True on a GPU-less
    # machine: several processes there then form a gloo group, not N singles.
    accelerator = Accelerator(cpu=not on_gpu,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              kwargs_handlers=handlers)
    seed_everything(cfg.seed)
    output_dir = Path(cfg.output_dir)
    main = accelerator.is_main_process
    local = JsonlTracker(output_dir) if main else None
    tracker = MultiTracker(local, tracker) if main else Tracker()
    if main:
        save_config(cfg, output_dir)
        tracker.log_params(to_dict(cfg))

    data = {name: load_split(cfg.data, name) for name in ("demos_train", "pairs_train", "demos_eval", "pairs_eval")}
    verifier = verifier_for(cfg.data)
    prompts_eval = load_split(cfg.data, "prompts_eval")[: cfg.greedy_eval_prompts] if verifier else []

    heads = () if cfg.mode == "sft" else ("reward",)
    model = load_hydra(cfg.model, heads=heads, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code,
                       chat_template=cfg.chat_template)
    # before any training: renders every prompt once (a record the chat template cannot render stops here)
    cut = {name: truncation(model.tokenizer, data[name], cfg.max_length) for name in READS[cfg.mode]}
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, target_modules=cfg.lora_target_modules)
    if cfg.gradient_checkpointing:
        model.base_model.gradient_checkpointing_enable()
    model.to(accelerator.device)
    model.train()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    params = list(trainable.values())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=(0.9, cfg.adam_beta2))
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    processes = Processes.join(accelerator.device)  # the group accelerate joined
    rank, world = processes.rank, processes.world
    streams = {"demos": BatchStream(data["demos_train"], cfg.demo_batch_size, cfg.seed, rank, world),
               "pairs": BatchStream(data["pairs_train"], cfg.pair_batch_size, cfg.seed + 1, rank, world)}
    meta = {"kind": f"{cfg.mode}-model" if cfg.mode != "hydra" else "hydra-sft", "base_model": cfg.model,
            "data": cfg.data, "mode": cfg.mode}

    store = CheckpointStore(cfg.checkpoint_uri, output_dir)
    if main:
        store.pull()
    accelerator.wait_for_everyone()
    start, history, last_checkpoint = 0, [], None
    if (cfg.resume or store.durable) and (last_checkpoint := checkpoint.latest(store.local)):
        start, history = checkpoint.load(last_checkpoint, trainable, optimizer, scheduler, streams, to_dict(cfg),
                                         RESUMABLE, rank, world)
        if main:
            announce_resume(tracker, last_checkpoint, start)
    if main:  # the rows after the checkpoint are redone below; a fresh run keeps none of an earlier one's
        local.start_from(history)

    def record(row: dict, step: int) -> None:
        tracker.log_metrics(row, step)
        history.append({"step": step, **row})

    bar = tqdm(total=cfg.steps, initial=start, desc=f"{cfg.mode} training", disable=not (progress and main))
    started = last_log = time.perf_counter()
    samples = tokens = 0
    for step in range(start + 1, cfg.steps + 1):
        for _ in range(cfg.gradient_accumulation_steps):
            demo_rows = streams["demos"].next() if cfg.mode != "rm" else []
            pair_rows = streams["pairs"].next() if cfg.mode != "sft" else []
            batch = {k: v.to(accelerator.device)
                     for k, v in _build_batch(cfg, model.tokenizer, demo_rows, pair_rows).items()}
            with accelerator.accumulate(wrapped):
                with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    losses = _losses(cfg, wrapped, batch, len(demo_rows))
                loss = losses["train/loss"]
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"step {step}: training loss is {loss.item()}; stopping. The last good checkpoint is "
                        f"{last_checkpoint or 'none (no checkpoint was written yet)'}. Lower --learning-rate or "
                        "check the data.")
                accelerator.backward(loss)
                if cfg.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            samples += len(demo_rows) + 2 * len(pair_rows)
            tokens += int(batch["attention_mask"].sum())
        bar.update(1)

        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            row = {k: float(v.detach()) for k, v in losses.items()}
            row.update({
                "train/lr": scheduler.get_last_lr()[0],
                "time/samples_per_s": samples * world / (now - last_log),
                "time/tokens_per_s": tokens * world / (now - last_log),
                "memory/peak_bytes": peak_bytes(accelerator.device),
            })
            samples = tokens = 0
            last_log = now
            record(row, step)
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", **(
                {"acc": f"{row['train/reward_accuracy']:.2f}"} if "train/reward_accuracy" in row else {}))
        if main and (step % cfg.eval_every == 0 or step == cfg.steps):
            record(_evaluate(cfg, model, data), step)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            rng = processes.gather(checkpoint.rng_state())  # every process's, for an exact resume
            if main:
                last_checkpoint = checkpoint.save(store.local, step, trainable, optimizer, scheduler, streams,
                                                  history, to_dict(cfg), rng)
                store.push(last_checkpoint)
            accelerator.wait_for_everyone()
    bar.close()

    summary = {"steps": cfg.steps, "train_seconds": time.perf_counter() - started, "processes": world,
               "mixed_precision": precision, "truncation": cut, **wrapped_modules([model])}
    if main:
        memory = model_memory([model], [optimizer])
        model.eval()
        if verifier:
            gold = {"eval/gold_accuracy": gold_accuracy(partial(generate, model), prompts_eval, verifier,
                                                        cfg.max_new_tokens)}
            record(gold, cfg.steps)
        # figures of the finished stage, one value each: params, not one-point charts
        tracker.log_params({**memory, "memory/stage_peak_bytes": stage_peak_bytes(history),
                            "time/train_seconds": round(summary["train_seconds"], 1), **truncation_params(cut)})
        for row in history:  # the latest value of every metric
            summary.update({k: v for k, v in row.items() if k != "step"})
        summary.update(memory)
        model.save(output_dir, **meta)
        shutil.rmtree(output_dir / checkpoint.DIRECTORY, ignore_errors=True)
        summary = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in summary.items()}
        (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        if plot_curves(history, CURVES, output_dir / CURVES_FILE, title=f"{cfg.mode} training"):
            tracker.log_artifact(output_dir / CURVES_FILE)
    accelerator.wait_for_everyone()
    return summary if main else {}
