"""`hydra-rlhf eval`: generate with the candidate and the baseline, judge every pair, report."""

from __future__ import annotations

import gc
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import torch

from hydra_core.config.fields import to_dict
from hydra_core.config.files import save_config
from hydra_core.config.settings import EvalConfig
from hydra_core.data.encoding import truncation, truncation_params
from hydra_core.data.schema import DataError, EvalPrompt
from hydra_core.data.splits import load_split, read_manifest, read_records
from hydra_core.data.tasks import verifier_for
from hydra_core.eval.judges import GoldJudge, Judge, Response, RewardModelJudge
from hydra_core.eval.openai_judge import OpenAIJudge
from hydra_core.eval.pairwise import judge_pairs, tally
from hydra_core.eval.report import SUMMARY_METRICS, headline, metric_names, write_report
from hydra_core.eval.stats import win_rate
from hydra_core.models.generation import Decoding, generate
from hydra_core.models.hydra import CONFIG_FILE, load_hydra, load_tokenizer
from hydra_core.models.reference import check_model
from hydra_core.runtime import default_dtype, pick_device, seed_everything
from hydra_core.tracking.base import Tracker


def load_prompts(source: str, max_prompts: int = 0) -> list[EvalPrompt]:
    """The prompts_eval split of a prepared directory, or a JSONL file of {"prompt", "reference"?}."""
    if Path(source).is_dir():
        prompts = load_split(source, "prompts_eval")
    else:
        if not Path(source).exists():
            raise FileNotFoundError(f"{source}: no such prompts file or prepared directory")
        prompts = read_records(Path(source), EvalPrompt)
        if not prompts:
            raise DataError(source, None, "has no prompts")
    return prompts[:max_prompts] if max_prompts > 0 else prompts


# The EvalConfig fields that only one judge reads: the run records those of the judge it used
JUDGE_FIELDS = {"openai": ("judge_base_url", "judge_model", "judge_api_key_env", "judge_concurrency",
                           "judge_timeout", "judge_max_retries", "judge_cache"),
                "reward-model": ("reward_model",), "gold": ()}


def run_params(cfg: EvalConfig) -> dict:
    """The settings an eval run records: every field but the other judges' own."""
    others = {name for judge, names in JUDGE_FIELDS.items() if judge != cfg.judge for name in names}
    return {name: value for name, value in to_dict(cfg).items() if name not in others}


def make_judge(cfg: EvalConfig) -> Judge:
    """The configured judge; fails here, before any generation, when it cannot work."""
    if cfg.judge == "openai":
        return OpenAIJudge(
            cfg.judge_base_url, cfg.judge_model, cfg.judge_api_key_env,
            cache_path=cfg.judge_cache or str(Path(cfg.output_dir) / "judge_cache.jsonl"),
            concurrency=cfg.judge_concurrency, timeout=cfg.judge_timeout, max_retries=cfg.judge_max_retries)
    if cfg.judge == "reward-model":
        return RewardModelJudge(cfg.reward_model or cfg.baseline, trust_remote_code=cfg.trust_remote_code,
                                chat_template=cfg.chat_template)
    if cfg.judge == "gold":
        verifier = verifier_for(cfg.prompts)
        if verifier is None:
            raise DataError(cfg.prompts, None,
                            "the gold judge needs a task verifier, and these prompts have none (it needs a "
                            "prepared directory whose manifest names a task with one, e.g. arithmetic); "
                            "use --judge openai or --judge reward-model")
        return GoldJudge(verifier, read_manifest(cfg.prompts)["task"])
    raise ValueError(f"unknown judge {cfg.judge!r}")


def decoding_of(cfg: EvalConfig) -> Decoding:
    return Decoding(max_new_tokens=cfg.max_new_tokens, greedy=cfg.greedy, temperature=cfg.temperature)


def respond(policy: str, prompts: list[EvalPrompt], cfg: EvalConfig) -> tuple[list[Response], dict]:
    """One response per prompt from `policy` (by HF generate or vLLM's engine, `rollout_engine`), which is then
    freed before the next model loads; and how many prompts its tokenizer cut (`encoding.truncation`)."""
    device = pick_device()
    texts = [p.prompt for p in prompts]
    # Seeding per policy makes each one's samples independent of which policy went first.
    seed_everything(cfg.seed)
    if cfg.rollout_engine == "vllm":
        from hydra_core.models.vllm_engine import VLLMEngine

        tokenizer = load_tokenizer(policy, cfg.trust_remote_code, cfg.chat_template)
        cut = truncation(tokenizer, prompts, cfg.max_prompt_length)
        engine = VLLMEngine(policy, device=device, dtype=default_dtype(device), max_sequences=min(len(texts), 256),
                            max_tokens=cfg.max_prompt_length + cfg.max_new_tokens, seed=cfg.seed,
                            trust_remote_code=cfg.trust_remote_code)
        try:
            out = engine.generate(tokenizer, texts, decoding_of(cfg), max_prompt_length=cfg.max_prompt_length,
                                  seed=cfg.seed)
        finally:
            engine.close()
    else:
        model = load_hydra(policy, heads=(), device=device, trust_remote_code=cfg.trust_remote_code,
                           chat_template=cfg.chat_template).eval()
        cut = truncation(model.tokenizer, prompts, cfg.max_prompt_length)
        out = generate(model, texts, decoding_of(cfg), max_prompt_length=cfg.max_prompt_length)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return [Response(text, bool(ended)) for text, ended in zip(out.texts, out.ended.tolist())], cut


def _started_from(candidate: str) -> str:
    """The SFT model a PPO policy started from, as its hydra_config.json records it."""
    config = Path(candidate) / CONFIG_FILE
    sft = json.loads(config.read_text()).get("sft_model") if config.exists() else None
    if not sft:
        raise ValueError(f"{candidate}: no --baseline given and the candidate does not record the SFT model it "
                         "started from (hydra_config.json 'sft_model'); pass --baseline")
    return sft


def run_eval(cfg: EvalConfig, tracker: Tracker | None = None) -> dict:
    """Judge `cfg.candidate` against `cfg.baseline` and write the report; returns the summary."""
    check_model(cfg.candidate, "candidate")
    if not cfg.baseline:
        cfg = replace(cfg, baseline=_started_from(cfg.candidate))
    check_model(cfg.baseline, "baseline")
    if cfg.judge == "reward-model" and cfg.reward_model:
        check_model(cfg.reward_model, "reward_model")
    tracker = tracker or Tracker()
    prompts = load_prompts(cfg.prompts, cfg.max_prompts)
    judge = make_judge(cfg)
    candidate, candidate_cut = respond(cfg.candidate, prompts, cfg)
    baseline, baseline_cut = respond(cfg.baseline, prompts, cfg)
    results = judge_pairs(judge, prompts, candidate, baseline)

    counts = tally(results)
    summary = {
        "candidate": cfg.candidate,
        "baseline": cfg.baseline,
        "prompts": cfg.prompts,
        **counts,
        **win_rate(counts["wins"], counts["ties"], counts["losses"], cfg.confidence),
        "decoding": {**asdict(decoding_of(cfg)), "seed": cfg.seed},
        "judge": judge.settings(),
        "truncation": {"candidate": candidate_cut, "baseline": baseline_cut},
    }
    summary["headline"] = headline(summary)
    paths = write_report(cfg.output_dir, results, summary)
    save_config(cfg, cfg.output_dir)

    tracker.log_params({**run_params(cfg), **truncation_params(summary["truncation"])})
    tracker.log_metrics(metric_names({name: math.nan if summary[name] is None else summary[name]
                                      for name in SUMMARY_METRICS}), step=0)
    for name in ("report", "chart", "judgments", "judgments_csv", "summary"):
        tracker.log_artifact(paths[name], artifact_path="eval")
    return summary
