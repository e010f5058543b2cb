"""Sampling responses: batched, with the KV cache, stopping at the end of turn (EOS without a chat
template: `data.chat.stop_ids`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hydra_core.data import chat
from hydra_core.data.encoding import left_padded_prompts
from hydra_core.data.schema import Prompt


@dataclass
class Decoding:
    """Decoding settings; recorded beside every evaluation so results can be compared."""

    max_new_tokens: int = 8
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class Generated:
    query_ids: torch.Tensor  # [B, P] left-padded prompts
    query_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] pad after the end (the token that ended it is kept)
    response_mask: torch.Tensor  # [B, R] 1 up to and including the end of turn or EOS
    ended: torch.Tensor  # [B] bool, the response ended (end of turn or EOS) within the cap
    texts: list[str]  # the responses' content: decoded without special tokens
    # [B, R] the engine's log-probs of the response tokens, after temperature (0 past the end); None from HF
    # generate, whose log-probs the trainer computes itself
    logprobs: torch.Tensor | None = None


def response_mask_after_eos(response_ids: torch.Tensor, stop: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask that keeps tokens up to and including the first stop token (EOS, end of turn); and whether one
    was found."""
    is_eos = torch.isin(response_ids, torch.tensor(stop, device=response_ids.device))
    ended = is_eos.any(dim=1)
    # tokens strictly after the first EOS have a positive count of earlier EOS tokens
    after = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return (~after).long(), ended


@torch.no_grad()
def generate(model, prompts: list[Prompt], decoding: Decoding, *, max_prompt_length: int = 512,
             batch_size: int = 256) -> Generated:
    """Generate for `prompts` with `model` (a HydraModel; its active adapters are used)."""
    tokenizer = model.tokenizer
    parts = []
    for start in range(0, len(prompts), batch_size):
        batch = left_padded_prompts(tokenizer, prompts[start:start + batch_size], max_prompt_length)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        sampling = {"do_sample": False} if decoding.greedy else {
            "do_sample": True,
            "temperature": decoding.temperature,
            "top_k": decoding.top_k or None,
            "top_p": decoding.top_p,
        }
        out = model.generate(
            **batch,
            max_new_tokens=decoding.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=chat.stop_ids(tokenizer),
            **sampling,
        )
        parts.append((batch["input_ids"], batch["attention_mask"], out[:, batch["input_ids"].shape[1]:]))
    return join_generated(parts, tokenizer, prompts)


def join_generated(parts, tokenizer, prompts: list[Prompt]) -> Generated:
    """One `Generated` from batches of (left-padded prompt ids, their mask, response ids padded on the right)."""
    width_q = max(q.shape[1] for q, _, _ in parts)
    width_r = max(max(r.shape[1] for _, _, r in parts), 1)
    pad = tokenizer.pad_token_id
    query = torch.cat([torch.nn.functional.pad(q, (width_q - q.shape[1], 0), value=pad) for q, _, _ in parts])
    qmask = torch.cat([torch.nn.functional.pad(m, (width_q - m.shape[1], 0), value=0) for _, m, _ in parts])
    resp = torch.cat([torch.nn.functional.pad(r, (0, width_r - r.shape[1]), value=pad) for _, _, r in parts])
    rmask, ended = response_mask_after_eos(resp, chat.stop_ids(tokenizer))
    resp = torch.where(rmask.bool(), resp, torch.full_like(resp, pad))
    texts = [chat.generated_response(tokenizer, prompt, text)
             for prompt, text in zip(prompts, tokenizer.batch_decode(resp, skip_special_tokens=True), strict=True)]
    return Generated(query, qmask, resp, rmask, ended, texts)
