"""The one internal schema every loader produces and every stage reads, and its one validator.

A preference pair is (prompt, chosen, rejected); a demonstration is (prompt, response); an eval
prompt may carry a reference answer that a task verifier can check. Records keep a `source` string
("file.jsonl:line 12") so any later error can still point at the input record it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar


class DataError(ValueError):
    """Bad input data. The message names the file, the record and the field."""

    def __init__(self, source: str, field: str | None, problem: str):
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}, field '{field}'" if field else source
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    source: str = ""


@dataclass(frozen=True)
class Demonstration:
    prompt: str
    response: str
    source: str = ""


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    reference: str = ""  # a gold answer where the task has one; empty otherwise
    source: str = ""


Record = TypeVar("Record", PreferencePair, Demonstration, EvalPrompt)


def check_text(value: Any, where: str, name: str, *, empty_ok: bool = False) -> str:
    """`value` if it is a string (non-blank unless `empty_ok`), else a DataError naming the field."""
    if not isinstance(value, str):
        raise DataError(where, name, f"expected a string, got {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise DataError(where, name, "is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # valid JSON ("\\ud83d") can still be a half of a character
        raise DataError(where, name, "holds a lone surrogate: half of a character (an emoji, say) cut in two, "
                        "which is not text") from None
    return value


def validate_pair(pair: PreferencePair) -> PreferencePair:
    for name in ("prompt", "chosen", "rejected"):
        check_text(getattr(pair, name), pair.source, name)
    if pair.chosen == pair.rejected:
        raise DataError(pair.source, "rejected", "is identical to 'chosen'; a pair must differ")
    return pair


def validate_demonstration(demo: Demonstration) -> Demonstration:
    for name in ("prompt", "response"):
        check_text(getattr(demo, name), demo.source, name)
    return demo


def validate_prompt(prompt: EvalPrompt) -> EvalPrompt:
    check_text(prompt.prompt, prompt.source, "prompt")
    check_text(prompt.reference, prompt.source, "reference", empty_ok=True)
    return prompt


VALIDATORS = {PreferencePair: validate_pair, Demonstration: validate_demonstration, EvalPrompt: validate_prompt}
