"""Small random-init base models and a character tokenizer, saved in Hugging Face format.

No weights can be downloaded in a sealed environment, so the embedded default builds its base
model from a config. The result is an ordinary model directory: `AutoModelForCausalLM` and
`AutoTokenizer` load it from its path exactly as they load Pythia, OPT, Llama or Qwen.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hydra_core.config import ModelInitConfig, save_config

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

# hidden, layers, heads, ffn. tiny-llama is the embedded default (~1M params); the larger two
# exist for the memory benchmark (~30M and ~120M with a 32k vocabulary).
# tiny-llama starts from a wider init than Llama's 0.02: from 0.02 its Hydra-SFT sat on a loss
# plateau for 500 to 1,200 steps (when it left it depended on the seed and float rounding), from
# 0.08 it leaves it within 200 to 400 steps.
PRESETS = {
    "tiny-llama": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                       vocab_size=None, max_position_embeddings=512, initializer_range=0.08),
    "llama-30m": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
                      vocab_size=32000, max_position_embeddings=1024),
    "llama-120m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048,
                       vocab_size=32000, max_position_embeddings=1024),
}


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, plus pad/bos/eos/unk."""
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS.values(), *string.printable])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters join with no separator
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def llama_config(preset: str, tokenizer) -> LlamaConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = dict(PRESETS[preset])
    spec["vocab_size"] = spec["vocab_size"] or len(tokenizer)
    return LlamaConfig(
        **spec,
        num_key_value_heads=spec["num_attention_heads"],
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_base_model(cfg: ModelInitConfig) -> Path:
    torch.manual_seed(cfg.seed)
    tokenizer = char_tokenizer()
    model = LlamaForCausalLM(llama_config(cfg.preset, tokenizer))
    out = Path(cfg.output_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_config(cfg, out)
    return out
