"""Records to token tensors. One place decides how a prompt and a response become tokens, so SFT,
reward training, PPO rollouts and evaluation all see the same sequences: the prompt rendered as
`chat` says (the chat template where the tokenizer has one), the response ended by the end-of-turn
token (EOS without a template).

Over-long rows are cut as real data needs: a prompt from the left, so the end of the conversation (the
turn the response answers) stays, and a response from the right. A row of SFT or reward training
gives its prompt what the response leaves of `max_length`, at least half of it; `truncation` counts
the records a limit cuts, for the stage summaries and the prepared data's manifest.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from hydra_core.data import chat
from hydra_core.data.schema import DataError, Demonstration, EvalPrompt, Prompt

IGNORE_INDEX = -100


# Training draws the same records again every epoch: tokenizing each once saves a tokenizer call (and a
# template rendering) per record per step, a sizeable share of a small model's step time.
@lru_cache(maxsize=1 << 18)
def prompt_ids(tokenizer, prompt: Prompt) -> tuple[int, ...]:
    """The whole rendered prompt's tokens."""
    if chat.uses_template(tokenizer):  # the template writes the special tokens (a BOS) itself
        return tuple(tokenizer(chat.templated(tokenizer, prompt), add_special_tokens=False)["input_ids"])
    # add_special_tokens: a tokenizer that starts sequences with BOS (Llama) does so here, once.
    return tuple(tokenizer(chat.as_text(prompt), add_special_tokens=True)["input_ids"])


@lru_cache(maxsize=1 << 18)
def response_ids(tokenizer, prompt: Prompt, response: str) -> tuple[int, ...]:
    """The response's tokens and the token that ends it."""
    text = chat.response_text(tokenizer, prompt, response)
    return (*tokenizer(text, add_special_tokens=False)["input_ids"], chat.end_of_turn_id(tokenizer))


def keep_end(ids, limit: int, bos_id: int | None) -> list[int]:
    """The last `limit` tokens; a leading BOS stays, as the model always saw one there."""
    ids = list(ids)
    if len(ids) <= limit:
        return ids
    if limit > 1 and bos_id is not None and ids[0] == bos_id:
        return [bos_id, *ids[len(ids) - limit + 1:]]
    return ids[len(ids) - limit:]


def encode_prompt(tokenizer, prompt: Prompt, max_length: int) -> list[int]:
    return keep_end(prompt_ids(tokenizer, prompt), max_length, tokenizer.bos_token_id)


def _fitted(tokenizer, prompt: Prompt, response: str, max_length: int) -> tuple[list[int], list[int], bool, bool]:
    """The prompt's and the response's tokens as a row of `max_length` holds them, and whether each was cut."""
    whole_prompt, whole_response = prompt_ids(tokenizer, prompt), response_ids(tokenizer, prompt, response)
    kept_prompt = keep_end(whole_prompt, max(1, max_length // 2, max_length - len(whole_response)),
                           tokenizer.bos_token_id)
    kept_response = list(whole_response[:max_length - len(kept_prompt)])
    return kept_prompt, kept_response, len(kept_prompt) < len(whole_prompt), len(kept_response) < len(whole_response)


def encode_pair_of(tokenizer, prompt: Prompt, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response + end of turn, cut to `max_length`, and the prompt's length."""
    kept_prompt, kept_response, _, _ = _fitted(tokenizer, prompt, response, max_length)
    return kept_prompt + kept_response, len(kept_prompt)


def truncation(tokenizer, records: list, max_length: int) -> dict[str, int]:
    """How many of `records` a limit cuts: for pairs and demonstrations the prompt and the response of a
    row of `max_length` (a pair counts once if either side is cut), for prompts `max_length` prompt tokens.
    Every prompt is rendered here once, so one the chat template cannot render stops the stage before any
    work, with its record named."""
    prompts_cut = responses_cut = 0
    for record in records:
        try:
            if isinstance(record, EvalPrompt):
                prompts_cut += len(prompt_ids(tokenizer, record.prompt)) > max_length
                continue
            answers = [record.response] if isinstance(record, Demonstration) else [record.chosen, record.rejected]
            cuts = [_fitted(tokenizer, record.prompt, answer, max_length)[2:] for answer in answers]
        except DataError as e:
            raise DataError(record.source, e.field, e.problem) from None
        prompts_cut += any(prompt for prompt, _ in cuts)
        responses_cut += any(response for _, response in cuts)
    counts = {"records": len(records), "prompts_cut": prompts_cut}
    if records and not isinstance(records[0], EvalPrompt):
        counts["responses_cut"] = responses_cut
    return counts


def truncation_params(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """{split: `truncation` counts} as a stage's run records them: `truncation/pairs_train/prompts_cut`, ..."""
    return {f"truncation/{split}/{name}": n for split, of_split in counts.items() for name, n in of_split.items()}


def pad_right(rows: list[list[int]], pad_id: int, value_for_pad: int | None = None) -> torch.Tensor:
    width = max(len(r) for r in rows)
    fill = pad_id if value_for_pad is None else value_for_pad
    return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=torch.long)


def lm_batch(tokenizer, demos, max_length: int) -> dict[str, torch.Tensor]:
    """Demonstrations as input ids and labels; only response tokens (and the end of turn) carry a loss."""
    ids, labels = [], []
    for d in demos:
        row, n_prompt = encode_pair_of(tokenizer, d.prompt, d.response, max_length)
        ids.append(row)
        labels.append([IGNORE_INDEX] * n_prompt + row[n_prompt:])
    input_ids = pad_right(ids, tokenizer.pad_token_id)
    return {
        "input_ids": input_ids,
        "attention_mask": pad_right([[1] * len(r) for r in ids], 0),
        "labels": pad_right(labels, tokenizer.pad_token_id, IGNORE_INDEX),
    }


def pair_batch(tokenizer, pairs, max_length: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows, in one right-padded batch."""
    rows = [encode_pair_of(tokenizer, p.prompt, p.chosen, max_length)[0] for p in pairs]
    rows += [encode_pair_of(tokenizer, p.prompt, p.rejected, max_length)[0] for p in pairs]
    return {
        "input_ids": pad_right(rows, tokenizer.pad_token_id),
        "attention_mask": pad_right([[1] * len(r) for r in rows], 0),
    }


def left_padded_prompts(tokenizer, prompts: list[Prompt], max_length: int) -> dict[str, torch.Tensor]:
    """Prompts padded on the left, as generation needs them."""
    rows = [encode_prompt(tokenizer, p, max_length) for p in prompts]
    width = max(len(r) for r in rows)
    return {
        "input_ids": torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
    }
