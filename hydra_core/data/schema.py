"""The one internal schema every loader produces and every stage reads, and its one validator.

A preference pair is (prompt, chosen, rejected); a demonstration is (prompt, response); an eval
prompt may carry a reference answer that a task verifier can check. A prompt is plain text or a
conversation: the messages before the response, the last of them a user turn. The responses are
always text (an assistant turn's content). Records keep a `source` string ("file.jsonl:line 12")
so any later error can still point at the input record it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, TypeVar

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """Bad input data. The message names the file, the record and the field."""

    def __init__(self, source: str, field: str | None, problem: str):
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}, field '{field}'" if field else source
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


Conversation = tuple[Message, ...]
# Plain text, or the conversation before the response; a conversation is rendered with the model's chat
# template (hydra_core.data.chat) where it has one, so the prepared data does not depend on the model.
Prompt = str | Conversation


@dataclass(frozen=True)
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str
    source: str = ""


@dataclass(frozen=True)
class Demonstration:
    prompt: Prompt
    response: str
    source: str = ""


@dataclass(frozen=True)
class EvalPrompt:
    prompt: Prompt
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


def check_messages(value: Any, where: str, name: str) -> Conversation:
    """A list of {"role", "content"} objects (or Messages) as a Conversation, else a DataError naming the
    message and its field (`prompt[2].role`). Only a message's content may be empty (real chat data has
    empty turns); a conversation may not."""
    if isinstance(value, tuple) and all(isinstance(m, Message) for m in value):
        value = [{"role": m.role, "content": m.content} for m in value]
    if not isinstance(value, list):
        raise DataError(where, name, f"expected a list of messages ({{'role', 'content'}} objects), "
                        f"got {type(value).__name__}")
    if not value:
        raise DataError(where, name, "is an empty conversation")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(where, f"{name}[{i}]", f"expected a message object, got {type(message).__name__}")
        for key in ("role", "content"):
            if message.get(key) is None:
                raise DataError(where, f"{name}[{i}].{key}", "is missing")
        role = check_text(message["role"], where, f"{name}[{i}].role")
        if role not in ROLES:
            raise DataError(where, f"{name}[{i}].role", f"{role!r} is not one of {', '.join(ROLES)}")
        messages.append(Message(role, check_text(message["content"], where, f"{name}[{i}].content", empty_ok=True)))
    return tuple(messages)


def check_prompt(value: Any, where: str, name: str = "prompt") -> Prompt:
    """Plain text, or a conversation that ends on a user turn (the response comes next)."""
    if isinstance(value, str):
        return check_text(value, where, name)
    conversation = check_messages(value, where, name)
    last = conversation[-1]
    if last.role != "user":
        raise DataError(where, f"{name}[{len(conversation) - 1}].role",
                        f"the prompt ends on a{'n' if last.role == 'assistant' else ''} {last.role} turn; "
                        "it must end on a user turn, which the response answers")
    if not any(m.content.strip() for m in conversation):
        raise DataError(where, name, "every message is empty")
    return conversation


def validate_pair(pair: PreferencePair) -> PreferencePair:
    pair = replace(pair, prompt=check_prompt(pair.prompt, pair.source))
    for name in ("chosen", "rejected"):
        check_text(getattr(pair, name), pair.source, name)
    if pair.chosen == pair.rejected:
        raise DataError(pair.source, "rejected", "is identical to 'chosen'; a pair must differ")
    return pair


def validate_demonstration(demo: Demonstration) -> Demonstration:
    demo = replace(demo, prompt=check_prompt(demo.prompt, demo.source))
    check_text(demo.response, demo.source, "response")
    return demo


def validate_prompt(prompt: EvalPrompt) -> EvalPrompt:
    prompt = replace(prompt, prompt=check_prompt(prompt.prompt, prompt.source))
    check_text(prompt.reference, prompt.source, "reference", empty_ok=True)
    return prompt


VALIDATORS = {PreferencePair: validate_pair, Demonstration: validate_demonstration, EvalPrompt: validate_prompt}
