"""Read preference pairs and demonstrations from files or Hugging Face datasets.

A source is either an existing local file (.jsonl, .json as a list of objects or JSON lines,
.parquet), read here so that errors can name the line, or anything else `datasets.load_dataset`
accepts (a hub id, a local directory of data files), whose errors name the row. Each supported
format is one converter from a raw row to a `PreferencePair`; all of them share one row reader
and one loop that validates, counts skipped records and applies `max_records`.

Prompts (what the policy is conditioned on):

- generic: `prompt` verbatim.
- conversational: messages ({"role", "content"}, roles system/user/assistant), as most hub preference
  sets hold them today. Explicit prompt: `prompt` (a conversation, or text as one user turn) with
  `chosen` and `rejected` each one assistant message (or a list holding one, or its text). Implicit
  prompt: `chosen` and `rejected` whole conversations that share every turn but their last, assistant,
  one (UltraFeedback-binarized; a text `prompt` beside them is left alone).
- hh-rlhf: the transcript's turns up to its last "\\n\\nAssistant:", as messages; the responses are
  the last turns of the `chosen` and `rejected` transcripts, whose earlier turns must be the same.
  Without a chat template they read exactly as the transcripts (`hydra_core.data.chat`).
- stack-exchange-paired: "Question: {question}\\n\\nAnswer: "; `response_j` is preferred over
  `response_k`.
- tldr: "SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:" (the subreddit and
  title lines only when present); each summary gets a leading space so it reads on from "TL;DR:".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm import tqdm

from hydra_core.config.settings import DataConfig
from hydra_core.data.chat import parse_transcript
from hydra_core.data.rows import SUFFIXES, file_rows
from hydra_core.data.schema import (Conversation, DataError, Demonstration, PreferencePair, check_messages,
                                     check_prompt, check_text, validate_demonstration, validate_pair)

MAX_SKIPPED_EXAMPLES = 5

Converter = Callable[[dict, str], Any]


@dataclass
class LoadResult:
    records: list  # PreferencePair or Demonstration, in input order
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (skip_bad only)
    skipped_examples: list[str] = field(default_factory=list)  # the first few errors, with source


# --- reading rows ----------------------------------------------------------------------------


def iter_rows(source: str, split: str = "train", config: str = "", data_dir: str = "") -> Iterator[tuple[str, Any]]:
    """(where, row) for every record of `source`: a local file (`rows.file_rows`) or a dataset.

    A record that cannot be parsed comes out as a `DataError` in place of its row, so that
    `skip_bad` can step over it; a source that cannot be read at all raises.
    """
    path = Path(source)
    if path.is_file():
        yield from file_rows(path)
    elif path.suffix in SUFFIXES:
        # Looks like a file name, so a hub lookup would only produce a confusing network error.
        raise DataError(source, None, "no such file")
    else:
        yield from _dataset_rows(source, split, config, data_dir)


def _dataset_rows(source: str, split: str, config: str, data_dir: str) -> Iterator[tuple[str, Any]]:
    import datasets

    label = _label(source, split)
    try:
        ds = datasets.load_dataset(source, name=config or None, data_dir=data_dir or None, split=split)
    except (OSError, ValueError) as e:  # not found, unreachable hub, unknown split or config
        raise DataError(label, None, f"cannot load dataset: {e}") from e
    for i, row in enumerate(ds, start=1):
        yield f"{label}:row {i}", row


def _label(source: str, split: str) -> str:
    """How messages name a source: a file by its path, a dataset by its id and split."""
    return source if Path(source).is_file() else f"{source}[{split}]"


# --- the shared loop -------------------------------------------------------------------------


def load_records(
    source: str,
    convert: Converter,
    *,
    split: str = "train",
    config: str = "",
    data_dir: str = "",
    max_records: int = 0,
    skip_bad: bool = False,
    progress: bool = True,
) -> LoadResult:
    """Convert every row of `source`; stop after `max_records` good records (0 = all).

    With `skip_bad`, records that fail are counted by reason instead of raising; a source with
    no good record at all is still an error.
    """
    result = LoadResult(records=[])
    reasons: Counter[str] = Counter()
    rows = tqdm(iter_rows(source, split, config, data_dir), desc=f"reading {source}", unit=" records",
                disable=None if progress else True)  # None: shown only on a terminal
    for where, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            result.records.append(convert(row, where))
        except DataError as e:
            if not skip_bad:
                raise
            reasons[f"field '{e.field}': {e.problem}" if e.field else e.problem] += 1
            if len(result.skipped_examples) < MAX_SKIPPED_EXAMPLES:
                result.skipped_examples.append(str(e))
        if max_records and len(result.records) >= max_records:
            break
    result.skipped = dict(reasons)
    if not result.records:
        problem = (f"has no valid records (skipped {sum(reasons.values())}: {result.skipped})"
                   if reasons else "has no records")
        raise DataError(_label(source, split), None, problem)
    return result


# --- field access ----------------------------------------------------------------------------


def _lookup(row: dict, name: str) -> Any:
    """The value at a dotted path ("info.post", "summaries.0.text"), or None if absent."""
    value: Any = row
    for part in name.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _value(row: dict, where: str, name: str) -> Any:
    value = _lookup(row, name)
    if value is None:  # a null column in Parquet or a hub dataset means the same as no key
        raise DataError(where, name, "is missing")
    return value


def _text(row: dict, where: str, name: str) -> str:
    # Checked on the input field, not only on the record, because a template around an empty
    # field would hide it and the message should name the input field.
    return check_text(_value(row, where, name), where, name)


def _optional_text(row: dict, name: str) -> str:
    value = _lookup(row, name)
    return value.strip() if isinstance(value, str) else ""


# --- one converter per format ----------------------------------------------------------------


def generic_pair(row: dict, where: str) -> PreferencePair:
    return validate_pair(PreferencePair(
        _text(row, where, "prompt"), _text(row, where, "chosen"), _text(row, where, "rejected"),
        source=where,
    ))


def _last_answer(conversation: Conversation, where: str, name: str) -> tuple[Conversation, str]:
    """A conversation that ends on the assistant's answer, as (the turns before it, the answer's text); the
    turns before it, when there are any, must make a prompt (`check_prompt`), named as field `name`."""
    last = conversation[-1]
    if last.role != "assistant":
        raise DataError(where, f"{name}[{len(conversation) - 1}].role",
                        f"the conversation ends on a {last.role} turn, not on the assistant's answer")
    answer = check_text(last.content, where, f"{name}[{len(conversation) - 1}].content")
    return (check_prompt(conversation[:-1], where, name) if len(conversation) > 1 else ()), answer


def _hh_answer(row: dict, where: str, name: str) -> tuple[Conversation, str]:
    """A transcript field as (the turns before its last Assistant turn, that turn's text)."""
    conversation = parse_transcript(_text(row, where, name), where, name)
    if conversation[-1].role != "assistant":
        raise DataError(where, name, "does not end on an '\\n\\nAssistant:' turn, the answer")
    try:
        return _last_answer(conversation, where, name)
    except DataError as e:  # a transcript is one text: name the field, not a message inside it
        raise DataError(where, name, e.problem) from None


def hh_rlhf_pair(row: dict, where: str) -> PreferencePair:
    prompt, chosen = _hh_answer(row, where, "chosen")
    other_prompt, rejected = _hh_answer(row, where, "rejected")
    if other_prompt != prompt:
        raise DataError(where, "rejected", "does not share the conversation before the last "
                        "Assistant turn with 'chosen'")
    return validate_pair(PreferencePair(prompt, chosen, rejected, source=where))


def _answer(value, where: str, name: str) -> str:
    """An explicit-prompt answer: one assistant message, a list holding one, or its text."""
    if isinstance(value, str):
        return check_text(value, where, name)
    messages = check_messages([value] if isinstance(value, dict) else value, where, name)
    if len(messages) != 1:
        raise DataError(where, name, f"holds {len(messages)} messages; the answer to an explicit prompt is one "
                        "assistant message (or give whole conversations, without 'prompt', for an implicit prompt)")
    return _last_answer(messages, where, name)[1]


def _is_conversation(value) -> bool:
    """Whether an answer field holds a whole conversation (the implicit-prompt form), not only the answer."""
    return isinstance(value, list) and any(isinstance(m, dict) and m.get("role") != "assistant" for m in value)


def conversational_pair(row: dict, where: str) -> PreferencePair:
    chosen, rejected = _value(row, where, "chosen"), _value(row, where, "rejected")
    if _is_conversation(chosen) or _is_conversation(rejected):
        prompt, chosen_text = _last_answer(check_messages(chosen, where, "chosen"), where, "chosen")
        other_prompt, rejected_text = _last_answer(check_messages(rejected, where, "rejected"), where, "rejected")
        if other_prompt != prompt:
            raise DataError(where, "rejected", "does not share every turn before its last with 'chosen' (an implicit "
                            "prompt is the turns the two conversations share)")
        if not prompt:
            raise DataError(where, "chosen", "holds only the answer; give the conversation before it, or a 'prompt'")
    else:
        raw = _value(row, where, "prompt")
        prompt = raw if isinstance(raw, str) else check_messages(raw, where, "prompt")
        chosen_text, rejected_text = _answer(chosen, where, "chosen"), _answer(rejected, where, "rejected")
    return validate_pair(PreferencePair(prompt, chosen_text, rejected_text, source=where))


def stack_exchange_pair(row: dict, where: str) -> PreferencePair:
    prompt = f"Question: {_text(row, where, 'question')}\n\nAnswer: "
    return validate_pair(PreferencePair(
        prompt, _text(row, where, "response_j"), _text(row, where, "response_k"), source=where,
    ))


def tldr_pair(row: dict, where: str) -> PreferencePair:
    post = _text(row, where, "info.post")
    subreddit, title = _optional_text(row, "info.subreddit"), _optional_text(row, "info.title")
    lines = [f"SUBREDDIT: r/{subreddit}"] if subreddit else []
    lines += [f"TITLE: {title}"] if title else []
    prompt = "\n".join(lines + [f"POST: {post}", "TL;DR:"])

    summaries = _value(row, where, "summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise DataError(where, "summaries", "expected a list of 2 summaries")
    texts = [_text(row, where, f"summaries.{i}.text") for i in (0, 1)]
    texts = [t if t.startswith(" ") else " " + t for t in texts]
    choice = _value(row, where, "choice")
    if isinstance(choice, bool) or not isinstance(choice, int) or choice not in (0, 1):
        raise DataError(where, "choice", f"expected 0 or 1 (the preferred summary), got {choice!r}")
    return validate_pair(PreferencePair(prompt, texts[choice], texts[1 - choice], source=where))


def demonstration(row: dict, where: str) -> Demonstration:
    """`prompt` (text or a conversation) and `response` (or `completion`: text or an assistant message); or
    `messages`, a conversation whose last turn, the assistant's, is the response."""
    if "messages" in row and "prompt" not in row:
        prompt, response = _last_answer(check_messages(_value(row, where, "messages"), where, "messages"),
                                        where, "messages")
        if not prompt:
            raise DataError(where, "messages", "holds only the answer; a demonstration needs the turns before it")
        return validate_demonstration(Demonstration(prompt, response, source=where))
    raw = _value(row, where, "prompt")
    prompt = raw if isinstance(raw, str) else check_messages(raw, where, "prompt")
    name = "completion" if "completion" in row and "response" not in row else "response"
    return validate_demonstration(Demonstration(prompt, _answer(_value(row, where, name), where, name), source=where))


PAIR_FORMATS: dict[str, Converter] = {
    "generic": generic_pair,
    "conversational": conversational_pair,
    "hh-rlhf": hh_rlhf_pair,
    "stack-exchange-paired": stack_exchange_pair,
    "tldr": tldr_pair,
}


# --- entry points ----------------------------------------------------------------------------


def load_preferences(cfg: DataConfig, progress: bool = True) -> LoadResult:
    """The preference pairs of `cfg.source`, read in `cfg.format`."""
    if cfg.format not in PAIR_FORMATS:
        raise ValueError(f"format {cfg.format!r} is not read from a source; "
                         f"file formats: {sorted(PAIR_FORMATS)}")
    return load_records(cfg.source, PAIR_FORMATS[cfg.format], split=cfg.dataset_split,
                        config=cfg.dataset_config, data_dir=cfg.dataset_data_dir, max_records=cfg.max_records,
                        skip_bad=cfg.skip_bad, progress=progress)


def load_demonstrations(
    source: str,
    *,
    split: str = "train",
    config: str = "",
    data_dir: str = "",
    max_records: int = 0,
    skip_bad: bool = False,
    progress: bool = True,
) -> LoadResult:
    """(prompt, response) demonstrations from a file or a dataset id."""
    return load_records(source, demonstration, split=split, config=config, data_dir=data_dir,
                        max_records=max_records, skip_bad=skip_bad, progress=progress)
