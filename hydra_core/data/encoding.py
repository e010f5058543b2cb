"""Records to token tensors. One place decides how a prompt and a response become tokens, so SFT,
reward training, PPO rollouts and evaluation all see the same sequences."""

from __future__ import annotations

from functools import lru_cache

import torch

IGNORE_INDEX = -100


@lru_cache(maxsize=1 << 18)
def _token_ids(tokenizer, text: str, special: bool) -> tuple[int, ...]:
    # Training draws the same records again every epoch: tokenizing each text once saves a
    # tokenizer call per record per step, a sizeable share of a small model's step time.
    return tuple(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_prompt(tokenizer, prompt: str, max_length: int) -> list[int]:
    # add_special_tokens: a tokenizer that starts sequences with BOS (Llama) does so here, once.
    return list(_token_ids(tokenizer, prompt, True)[-max_length:])  # an over-long prompt keeps its end


def encode_response(tokenizer, response: str) -> list[int]:
    return [*_token_ids(tokenizer, response, False), tokenizer.eos_token_id]


def encode_pair_of(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response + EOS, cut to `max_length`, and the prompt's length."""
    prompt_ids = encode_prompt(tokenizer, prompt, max(1, max_length // 2))
    ids = (prompt_ids + encode_response(tokenizer, response))[:max_length]
    return ids, len(prompt_ids)


def pad_right(rows: list[list[int]], pad_id: int, value_for_pad: int | None = None) -> torch.Tensor:
    width = max(len(r) for r in rows)
    fill = pad_id if value_for_pad is None else value_for_pad
    return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=torch.long)


def lm_batch(tokenizer, demos, max_length: int) -> dict[str, torch.Tensor]:
    """Demonstrations as input ids and labels; only response tokens (and EOS) carry a loss."""
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


def left_padded_prompts(tokenizer, prompts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Prompts padded on the left, as generation needs them."""
    rows = [encode_prompt(tokenizer, p, max_length) for p in prompts]
    width = max(len(r) for r in rows)
    return {
        "input_ids": torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
    }
