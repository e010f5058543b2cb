"""`hydra-rlhf prepare`: load and validate preference data, split it, write a prepared directory.

The split is by prompt, so that no prompt of the eval splits was seen in training, and it is a
seeded shuffle of the distinct prompts, so the same data and seed give the same split. The six
split files of `splits.SPLIT_FILES` are written first and `manifest.json` last: a directory with
no manifest is an unfinished one. Given a tokenizer, the manifest also says how many records of each
split the stages' length limits will cut (`encoding.truncation`, the very rule the stages apply).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from hydra_core.config.files import save_config
from hydra_core.config.settings import DataConfig
from hydra_core.data.chat import apply_template_setting, as_text
from hydra_core.data.encoding import truncation
from hydra_core.data.loaders import LoadResult, load_demonstrations, load_preferences
from hydra_core.data.schema import DataError, Demonstration, EvalPrompt
from hydra_core.data.splits import MANIFEST, SPLIT_FILES, write_records


def prepare(cfg: DataConfig, progress: bool = True) -> dict:
    """Write the prepared directory `cfg.output_dir` and return its manifest."""
    out = Path(cfg.output_dir)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MANIFEST).exists())):
        raise DataError(str(out), None, "exists and is not a prepared data directory (no manifest.json); "
                        "choose another output_dir: preparing replaces the whole directory")
    tokenizer = _tokenizer(cfg) if cfg.tokenizer else None  # before the data: a bad one fails at once
    if cfg.format == "arithmetic":
        # Imported here so that the file formats work without the arithmetic task module.
        from hydra_core.data.arithmetic import build_task

        task = build_task(cfg)
        splits = {name: task[name] for name in SPLIT_FILES}
        info = {**task["task_info"], "source": "embedded arithmetic task",
                "demonstrations": "generated with the task", "skipped": {}}
    else:
        splits, info = _split_by_prompt(cfg, progress)

    files = {name: f"{name}.{cfg.output_format}" for name in SPLIT_FILES}
    manifest = {
        **info,
        "task": cfg.format,
        "seed": cfg.seed,
        "counts": {name: len(splits[name]) for name in SPLIT_FILES},
        "lengths": _lengths(splits),
        **({"truncation": _truncation(cfg, tokenizer, splits)} if tokenizer is not None else {}),
        "files": files,
        "config": asdict(cfg),
        "created_with": _created_with(),
    }
    _write(out, splits, files, manifest, cfg)
    return manifest


def _split_by_prompt(cfg: DataConfig, progress: bool) -> tuple[dict[str, list], dict]:
    loaded = {"pairs": load_preferences(cfg, progress)}
    pairs = loaded["pairs"].records
    eval_prompts = _eval_prompts([p.prompt for p in pairs], cfg)
    if cfg.demonstrations:
        loaded["demonstrations"] = load_demonstrations(
            cfg.demonstrations, split=cfg.dataset_split, max_records=cfg.max_records,
            skip_bad=cfg.skip_bad, progress=progress)
        demos = loaded["demonstrations"].records
        _same_kind_of_prompt(pairs[0], demos, cfg)
        # Prompts shared with the pairs follow the pairs' split; the others get their own draw.
        pair_prompts = {p.prompt for p in pairs}
        eval_prompts |= _eval_prompts([d.prompt for d in demos if d.prompt not in pair_prompts], cfg)
    else:
        # One prompt often has several pairs with the same chosen answer; keep that answer once.
        demos = [Demonstration(p.prompt, p.chosen, source=p.source)
                 for p in _first_of_each(pairs, lambda p: (p.prompt, p.chosen))]

    splits: dict[str, list] = {}
    for split, in_eval in (("train", False), ("eval", True)):
        side_pairs = [p for p in pairs if (p.prompt in eval_prompts) == in_eval]
        side_demos = [d for d in demos if (d.prompt in eval_prompts) == in_eval]
        splits[f"pairs_{split}"], splits[f"demos_{split}"] = side_pairs, side_demos
        splits[f"prompts_{split}"] = [EvalPrompt(r.prompt, source=r.source)
                                      for r in _first_of_each(side_pairs + side_demos, lambda r: r.prompt)]

    for name, records in splits.items():
        if not records:
            source = cfg.demonstrations if name.startswith("demos") and cfg.demonstrations else cfg.source
            skipped = {kind: r.skipped for kind, r in loaded.items() if r.skipped}
            raise DataError(source, None, f"too small to split: split '{name}' would be empty "
                            f"(eval_fraction={cfg.eval_fraction}); the split is by distinct prompt, "
                            "so it needs at least 2 distinct prompts, one for train and one for eval"
                            + (f"; --skip-bad left out {_skipped_text(skipped)}" if skipped else ""))
    info = {
        "source": cfg.source,
        "demonstrations": cfg.demonstrations or "chosen responses of the pairs",
        "skipped": {name: _skip_report(result) for name, result in loaded.items()},
    }
    return splits, info


def _same_kind_of_prompt(pair, demos: list[Demonstration], cfg: DataConfig) -> None:
    """Demonstrations whose prompts are text beside pairs whose prompts are conversations (or the other way
    round) could never share a prompt, and a split file holds one kind: refused, naming the first."""
    conversation = not isinstance(pair.prompt, str)
    odd = next((d for d in demos if isinstance(d.prompt, str) == conversation), None)
    if odd is not None:
        this, theirs = ("text", "conversations") if conversation else ("a conversation", "text")
        raise DataError(odd.source, "prompt", f"is {this} while the pairs' prompts ({cfg.source}) are {theirs}; give "
                        "demonstrations and pairs in one form (--format conversational reads messages)")


def _tokenizer(cfg: DataConfig):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise DataError(cfg.tokenizer, None, f"cannot load a tokenizer from it ({str(e).splitlines()[0]})") from None
    apply_template_setting(tokenizer, cfg.chat_template)
    return tokenizer


def _truncation(cfg: DataConfig, tokenizer, splits: dict[str, list]) -> dict:
    """How many records of each split the limits cut: training rows at `max_length` (SFT's), prompts at
    `max_prompt_length` (PPO's rollouts and eval)."""
    limits = {name: cfg.max_prompt_length if name.startswith("prompts") else cfg.max_length for name in SPLIT_FILES}
    return {"tokenizer": cfg.tokenizer, "chat_template": cfg.chat_template or "the tokenizer's own",
            "max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
            **{name: truncation(tokenizer, splits[name], limits[name]) for name in SPLIT_FILES}}


def _skipped_text(skipped: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{sum(reasons.values())} {kind} ({', '.join(f'{n} with {why}' for why, n in reasons.items())})"
                     for kind, reasons in skipped.items())


def _eval_prompts(prompts: list, cfg: DataConfig) -> set:
    """The distinct prompts drawn for eval: a seeded shuffle, at least one for each side."""
    distinct = list(dict.fromkeys(prompts))  # not a set: set order changes from run to run
    if len(distinct) < 2:
        return set()  # nothing to split; the caller reports the empty split
    random.Random(cfg.seed).shuffle(distinct)
    n_eval = min(max(1, round(len(distinct) * cfg.eval_fraction)), len(distinct) - 1)
    return set(distinct[:n_eval])


def _first_of_each(records: list, key) -> list:
    first: dict = {}
    for record in records:
        first.setdefault(key(record), record)
    return list(first.values())


def _skip_report(result: LoadResult) -> dict:
    return {"total": sum(result.skipped.values()), "by_reason": result.skipped,
            "examples": result.skipped_examples}


def _lengths(splits: dict[str, list]) -> dict[str, dict]:
    pairs = splits["pairs_train"] + splits["pairs_eval"]
    demos = splits["demos_train"] + splits["demos_eval"]
    return {
        "prompt": _stats([as_text(p.prompt) for p in pairs]),
        "chosen": _stats([p.chosen for p in pairs]),
        "rejected": _stats([p.rejected for p in pairs]),
        "demonstration": _stats([d.response for d in demos]),
    }


def _stats(texts: list[str]) -> dict:
    """Length in characters: mean, nearest-rank p50 and p95, max."""
    n = sorted(len(t) for t in texts)
    if not n:
        return {}
    return {"mean": round(sum(n) / len(n), 1), "p50": n[math.ceil(0.5 * len(n)) - 1],
            "p95": n[math.ceil(0.95 * len(n)) - 1], "max": n[-1]}


def _write(out: Path, splits: dict[str, list], files: dict[str, str], manifest: dict, cfg: DataConfig) -> None:
    """Write the directory beside `out` and move it into place complete: a reader never sees a half
    written directory, nor the splits of an earlier run beside the new ones."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
    try:
        for name, records in splits.items():
            write_records(records, staging / files[name])
        save_config(cfg, staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out.exists():
            replaced = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            out.rename(replaced)
            staging.rename(out)
            shutil.rmtree(replaced)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _created_with() -> str:
    try:
        return f"hydra-rlhf {metadata.version('hydra-rlhf')}"
    except metadata.PackageNotFoundError:  # run from a source checkout that was never installed
        return "hydra-rlhf (uninstalled source checkout)"
