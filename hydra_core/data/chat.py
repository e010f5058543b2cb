"""How a prompt becomes the text a model reads, and where its response ends.

Where the tokenizer has a chat template, every prompt is rendered with it
(`apply_chat_template(..., add_generation_prompt=True)`; a plain-text prompt is one user turn), and a
response ends with the template's end-of-turn token (Qwen's `<|im_end|>`, Llama 3's `<|eot_id|>`),
which generation stops at and PPO treats as EOS. Without a template a plain-text prompt is read as it
is, and a conversation as an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant:", the response after
a space), so HH-RLHF data reads exactly as its transcripts did. The prepared data holds conversations
as messages, whatever the model: the rendering is the model's business, decided here once.

`chat_template` settings (SFT, PPO, eval, prepare; checked in hydra_core.config): "" keeps the
tokenizer's own, "none" reads every prompt as plain text even where the tokenizer has a template, a file
path sets the Jinja template in it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from hydra_core.config.settings import NO_CHAT_TEMPLATE
from hydra_core.data.schema import Conversation, DataError, Message, Prompt

TRANSCRIPT_LABELS = {"system": "System", "user": "Human", "assistant": "Assistant"}
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE_OF = {"Human": "user", "Assistant": "assistant"}
_MARKER = "HydraRlhfResponseMarker7"  # where the template writes an answer's content (letters: templates trim spaces)


# --- HH-RLHF transcripts ---------------------------------------------------------------------------


def parse_transcript(text: str, where: str, name: str) -> Conversation:
    """An HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages; each turn's one space
    after its label is the transcript's, not the content's."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise DataError(where, name, "has text before its first '\\n\\nHuman:' or '\\n\\nAssistant:' turn")
    if len(parts) == 1:
        raise DataError(where, name, "has no '\\n\\nHuman:' or '\\n\\nAssistant:' turn")
    return tuple(Message(_ROLE_OF[label], content.removeprefix(" "))
                 for label, content in zip(parts[1::2], parts[2::2]))


def transcript(conversation: Conversation) -> str:
    """A conversation as an HH-RLHF transcript that asks for the assistant's next turn."""
    turns = "".join(f"\n\n{TRANSCRIPT_LABELS[m.role]}: {m.content}" for m in conversation)
    return f"{turns}\n\nAssistant:"


def as_text(prompt: Prompt) -> str:
    """The prompt's text without a template, as a person (or a judge model) reads it: the text, or the
    conversation's transcript."""
    return prompt if isinstance(prompt, str) else transcript(prompt)


# --- the chat template --------------------------------------------------------------------------


def uses_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def apply_template_setting(tokenizer, setting: str) -> None:
    """Give `tokenizer` the template a stage's `chat_template` setting names (see the module's doc)."""
    if not setting:
        return
    tokenizer.chat_template = None if setting == NO_CHAT_TEMPLATE else Path(setting).read_text(encoding="utf-8")


def _messages(prompt: Prompt) -> list[dict]:
    conversation = (Message("user", prompt),) if isinstance(prompt, str) else prompt
    return [{"role": m.role, "content": m.content} for m in conversation]


def templated(tokenizer, prompt: Prompt) -> str:
    """The prompt rendered by the tokenizer's chat template, up to where the assistant's answer starts."""
    try:
        return tokenizer.apply_chat_template(_messages(prompt), tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - a template raises what it likes (jinja's TemplateError, ValueError)
        raise DataError("a prompt", "prompt", f"the tokenizer's chat template cannot render it: {e}") from None


def response_text(tokenizer, prompt: Prompt, response: str) -> str:
    """The text of a response as it follows its rendered prompt (a transcript's answer after a space)."""
    return f" {response}" if not isinstance(prompt, str) and not uses_template(tokenizer) else response


def generated_response(tokenizer, prompt: Prompt, text: str) -> str:
    """A generated response's content: its text less what `response_text` puts before the content."""
    return text.removeprefix(" ") if not isinstance(prompt, str) and not uses_template(tokenizer) else text


@functools.lru_cache(maxsize=64)
def end_of_turn_id(tokenizer) -> int:
    """The token that ends a response: the template's end of an assistant turn (the first special token
    the template writes after the turn's content), or EOS without a template or where it writes none."""
    if not uses_template(tokenizer):
        return tokenizer.eos_token_id
    conversation = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _MARKER}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot write an assistant turn: EOS it is
        return tokenizer.eos_token_id
    after = text.split(_MARKER, 1)[1] if _MARKER in text else ""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    return next((i for i in ids if i in special), tokenizer.eos_token_id)


def stop_ids(tokenizer) -> list[int]:
    """Every token that ends a generated response: the end of turn, and EOS."""
    return list(dict.fromkeys([end_of_turn_id(tokenizer), tokenizer.eos_token_id]))
