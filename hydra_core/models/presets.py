"""Small random-init base models and their tokenizers, saved in Hugging Face format.

No weights can be downloaded in a sealed environment, so the embedded default builds its base
model from a config. The result is an ordinary model directory: `AutoModelForCausalLM` and
`AutoTokenizer` load it from its path exactly as they load Pythia, OPT, Llama or Qwen.

The `tiny-<architecture>` presets stand in for the recipes' models (Pythia, Qwen2.5, Llama 3,
GPT-2): the same model class, and a byte-level BPE tokenizer with that family's special tokens,
padding and chat template, so a recipe's code paths run on a laptop and in the tests. Their
weights are random: they run a recipe, they do not learn anything useful from it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM, PretrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerFast, Qwen2ForCausalLM, Qwen2Tokenizer)

from hydra_core.config.files import save_config
from hydra_core.config.settings import ModelInitConfig
from hydra_core.models.corpus import corpus_lines

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

BPE_VOCAB_SIZE = 1024  # learnt tokens (the 256 bytes among them), before the special tokens

ENDOFTEXT = "<|endoftext|>"
BEGIN_OF_TEXT = "<|begin_of_text|>"

# Both templates are written here for these presets, after the layout the real models' templates produce.
CHATML_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class BPEKind:
    """A family's byte-level BPE tokenizer: its special tokens, which of them play bos, eos and unk
    (None: the family has none), and its chat template."""

    specials: tuple[str, ...]  # ids in this order after the learnt vocabulary, as the real ones place them
    roles: dict[str, str | None]
    bos_first: bool = False  # the post-processor starts every sequence with bos (Llama 3); others add none
    chat_template: str | None = None
    # transformers loads a qwen2 model's tokenizer as Qwen2Tokenizer whatever its directory names, and
    # that class splits text its own way (NFC, then Qwen2's regex): the vocabulary is learnt that way too.
    loaded_as: type[PreTrainedTokenizerFast] | None = None


BPE_KINDS = {
    "gpt2": BPEKind((ENDOFTEXT,), dict(bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=ENDOFTEXT)),
    "qwen2": BPEKind((ENDOFTEXT, "<|im_start|>", "<|im_end|>"),
                     dict(bos_token=None, eos_token="<|im_end|>", unk_token=None),
                     chat_template=CHATML_TEMPLATE, loaded_as=Qwen2Tokenizer),
    "llama3": BPEKind((BEGIN_OF_TEXT, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                      dict(bos_token=BEGIN_OF_TEXT, eos_token="<|end_of_text|>", unk_token=None), bos_first=True,
                      chat_template=LLAMA3_TEMPLATE),
}


@dataclass(frozen=True)
class Preset:
    architecture: type[PreTrainedModel]
    tokenizer: str  # "char", or a key of BPE_KINDS
    tie_word_embeddings: bool  # as the real architecture has it
    config: dict  # in the architecture config's own names; vocab_size defaults to the tokenizer's


# The tiny-<architecture> stand-ins' shape: ~1M parameters, and room for a recipe's 1,024-token sequences.
_TINY = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
             max_position_embeddings=1024)
# tiny-llama is the embedded default (~1M params); llama-30m, llama-120m and llama-1b exist for the memory
# benchmark (~30M, ~120M and ~1.0B with a 32k vocabulary; llama-1b is for a GPU: its fp32 weights alone are
# 3.7 GiB, and the GPU check measures at that size).
# tiny-llama starts from a wider init than Llama's 0.02: from 0.02 its Hydra-SFT sat on a loss
# plateau for 500 to 1,200 steps (when it left it depended on the seed and float rounding), from
# 0.08 it leaves it within 200 to 400 steps.
PRESETS = {
    "tiny-llama": Preset(LlamaForCausalLM, "char", True, dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=512,
        max_position_embeddings=512, initializer_range=0.08)),
    "llama-30m": Preset(LlamaForCausalLM, "char", True, dict(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6, intermediate_size=1536,
        vocab_size=32000, max_position_embeddings=1024)),
    "llama-120m": Preset(LlamaForCausalLM, "char", True, dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12, intermediate_size=2048,
        vocab_size=32000, max_position_embeddings=1024)),
    "llama-1b": Preset(LlamaForCausalLM, "char", True, dict(
        hidden_size=2048, num_hidden_layers=18, num_attention_heads=16, num_key_value_heads=16, intermediate_size=5632,
        vocab_size=32000, max_position_embeddings=2048)),
    # Pythia: rotary on a quarter of each head and parallel residuals, GPTNeoXConfig's defaults.
    "tiny-gpt-neox": Preset(GPTNeoXForCausalLM, "gpt2", False, _TINY),
    # grouped-query attention, 2 key-value heads for 4 query heads (Qwen2.5-0.5B: 2 for 14)
    "tiny-qwen2": Preset(Qwen2ForCausalLM, "qwen2", True, {**_TINY, "num_key_value_heads": 2}),
    "tiny-llama3": Preset(LlamaForCausalLM, "llama3", True, {**_TINY, "num_key_value_heads": 2}),
    # GPT-2's config has its own names (and learnt positions); its MLP is 4 x n_embd wide.
    "tiny-gpt2": Preset(GPT2LMHeadModel, "gpt2", True, dict(n_embd=128, n_layer=4, n_head=4, n_positions=1024)),
}


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, plus pad/bos/eos/unk."""
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS.values(), *string.printable])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters join with no separator
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def bpe_tokenizer(kind: BPEKind) -> PreTrainedTokenizerFast:
    """A byte-level BPE learnt from the built-in corpus: every text encodes, with no unknown token, and
    decodes back to itself."""
    backend = Tokenizer(models.BPE())
    if kind.loaded_as is None:
        # No space put in front of a text: decoding gives back exactly what was encoded.
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        own = kind.loaded_as().backend_tokenizer
        backend.normalizer, backend.pre_tokenizer = own.normalizer, own.pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(corpus_lines(), trainer)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in kind.specials])
    if kind.bos_first:
        bos = kind.roles["bos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))])
    # No pad token, as none of the real ones has (load_hydra pads with eos). The roles a family lacks are
    # saved as null, so no tokenizer class's default fills them in on load (Qwen2Tokenizer's is <|endoftext|>).
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=kind.chat_template, pad_token=None,
                                   **kind.roles)


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def model_config(spec: Preset, tokenizer) -> PretrainedConfig:
    return spec.architecture.config_class(
        **{"vocab_size": len(tokenizer), **spec.config},
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_base_model(cfg: ModelInitConfig) -> Path:
    spec = preset(cfg.preset)
    tokenizer = char_tokenizer() if spec.tokenizer == "char" else bpe_tokenizer(BPE_KINDS[spec.tokenizer])
    torch.manual_seed(cfg.seed)
    model = spec.architecture(model_config(spec, tokenizer))
    out = Path(cfg.output_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_config(cfg, out)
    return out
