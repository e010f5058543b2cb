"""vLLM's offline engine in this process, beside the trainer (colocated): a model's frozen backbone loaded once,
LoRA adapters handed to it as small saved folders, token ids in and token ids out.

The prompts are encoded here, as for HF `generate` (`encoding.left_padded_prompts`), and the responses come back
as a `generation.Generated` with the engine's own log-probs of the sampled tokens beside them, so the trainer
treats both engines' rollouts alike and can measure how far the engine's log-probs are from its own.

Only this module imports vllm, and only when an engine is made; without it a run stops before any work, in one line
naming the extra (`settings.vllm_missing`).
"""

from __future__ import annotations

import gc
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hydra_core.config.settings import vllm_missing
from hydra_core.data import chat
from hydra_core.data.encoding import left_padded_prompts
from hydra_core.data.schema import Prompt
from hydra_core.models.generation import Decoding, Generated, join_generated

# the adapter ranks vLLM can serve (its LoRAConfig.max_lora_rank); an adapter's rank is rounded up to one
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM keeps the KV cache in blocks; a sequence's share is rounded up to this many tokens (the largest block size
# its CPU and GPU backends use), so a rollout batch of full-length sequences always fits at once
_KV_ROUNDING = 128
# settings vLLM reads from the environment, for an engine that shares its process with the trainer: the engine
# core in this process (no second process with a second copy of CUDA's context), and on CPU no pinning of
# threads to cores and no dropping the process to one thread, which would slow every training step after it
_COLOCATED_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                  "VLLM_LOGGING_LEVEL": "WARNING"}


def serving_rank(rank: int) -> int:
    """The smallest rank vLLM serves that holds an adapter of rank `rank`."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"lora_rank {rank}: vLLM serves adapters up to rank {LORA_RANKS[-1]}")


def kv_cache_bytes(config, dtype: torch.dtype, sequences: int, tokens: int) -> int:
    """The KV cache that holds `sequences` sequences of `tokens` tokens at once, for an HF model config: each
    layer keeps a key and a value per key-value head per token."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * heads * head_dim * torch.tensor([], dtype=dtype).element_size()
    return per_token * sequences * _KV_ROUNDING * math.ceil(tokens / _KV_ROUNDING)


def _weights_view(path: str) -> str:
    """What vLLM should load for `path`: a local model directory as links to everything in it but the Hydra heads'
    file (vLLM loads every *.safetensors of a directory into the backbone, and would stop at the heads' names);
    a hub id as it is."""
    from hydra_core.models.hydra import HEADS_FILE

    source = Path(path)
    if not source.is_dir() or not (source / HEADS_FILE).exists():
        return path
    view = Path(tempfile.mkdtemp(prefix="hydra-vllm-model-"))
    for item in source.iterdir():
        if item.name != HEADS_FILE:
            (view / item.name).symlink_to(item.resolve())
    return str(view)


@dataclass
class _RandomState:
    """The process's random streams: vLLM seeds them all when it starts in this process, and the trainer's
    runs (and their exact resume) must not depend on whether an engine started."""

    python: object
    numpy: dict
    torch: torch.Tensor
    cuda: list | None

    @classmethod
    def take(cls) -> _RandomState:
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(),
                   torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _parameter_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _checkpoint_bytes(folder: str, dtype: torch.dtype) -> int:
    """The bytes of a local checkpoint's weights in `dtype`, read from the safetensors headers (0 for a hub id).
    Counted from the checkpoint, not from the engine's modules: on CPU vLLM repacks linear weights for its kernels
    into tensors that are no parameters."""
    from safetensors import safe_open

    size = torch.tensor([], dtype=dtype).element_size()
    total = 0
    for file in Path(folder).glob("*.safetensors") if Path(folder).is_dir() else ():
        with safe_open(str(file), framework="pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys()) * size
    return total


class VLLMEngine:
    """One model in vLLM's offline engine, in this process.

    `lora_rank` > 0 serves LoRA adapters of up to that rank over the frozen weights (`use_adapter`); 0 serves the
    weights alone. The KV cache is sized for `max_sequences` sequences of `max_tokens` tokens (prompt and
    response) at once. On CUDA the engine can sleep (`sleep`: weights to host memory, KV cache dropped) while the
    trainer has the GPU; on CPU sleeping is not available in vLLM and the engine stays resident.
    """

    def __init__(self, path: str, *, device: torch.device, dtype: torch.dtype, max_sequences: int, max_tokens: int,
                 lora_rank: int = 0, seed: int = 0, trust_remote_code: bool = False):
        if problem := vllm_missing():
            raise ValueError(f"the vLLM engine {problem}")
        from transformers import AutoConfig

        for name, value in _COLOCATED_ENV.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        from vllm import LLM

        self.device = device
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        # no longer than the model's positions (vLLM refuses more); the trainer would run past them unwarned
        max_tokens = min(max_tokens, getattr(config, "max_position_embeddings", None) or max_tokens)
        self.kv_bytes = kv_cache_bytes(config, dtype, max_sequences, max_tokens)
        self._view = _weights_view(path)
        self._own_view = self._view != path
        self._adapter_id = 0
        self.lora = None
        random_state, set_num_threads = _RandomState.take(), torch.set_num_threads
        try:
            self.llm = LLM(model=self._view, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code,
                           skip_tokenizer_init=True,  # token ids in and out: the prompts are encoded by the caller
                           max_model_len=max_tokens, max_num_seqs=max_sequences, kv_cache_memory_bytes=self.kv_bytes,
                           enable_lora=lora_rank > 0, max_loras=1, max_lora_rank=serving_rank(max(lora_rank, 1)),
                           enforce_eager=device.type == "cpu", enable_sleep_mode=device.type == "cuda",
                           enable_prefix_caching=False,  # a rollout's prompts rarely repeat; nothing to reuse
                           logprobs_mode="processed_logprobs")  # after temperature: comparable to the trainer's
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process
            torch.set_num_threads = set_num_threads
            random_state.restore()
        self.weight_bytes = _checkpoint_bytes(self._view, dtype) or sum(self.llm.apply_model(_parameter_bytes))
        self.awake = True

    @property
    def memory_bytes(self) -> int:
        """What the engine holds while awake: its weights and its KV cache."""
        return self.weight_bytes + self.kv_bytes

    def use_adapter(self, folder: str | None) -> None:
        """Serve the LoRA adapter saved in `folder` (a PEFT adapter folder) from the next `generate` on, under a new
        id, and drop the one served before (the folder may go once this returns); None serves the weights alone."""
        if self.lora is not None:
            self.llm.llm_engine.remove_lora(self.lora.lora_int_id)
        self.lora = None
        if folder is not None:
            from vllm.lora.request import LoRARequest

            self._adapter_id += 1
            self.lora = LoRARequest(f"adapter-{self._adapter_id}", self._adapter_id, folder)
            self.llm.llm_engine.add_lora(self.lora)  # loaded now, while its folder is there

    def sleep(self) -> None:
        """Give the GPU back to the trainer between rollouts (the weights wait in host memory)."""
        if self.device.type == "cuda" and self.awake:
            self.llm.sleep(level=1)
            self.awake = False

    def wake(self) -> None:
        if not self.awake:
            self.llm.wake_up()
            self.awake = True

    @torch.no_grad()
    def generate(self, tokenizer, prompts: list[Prompt], decoding: Decoding, *, max_prompt_length: int,
                 seed: int = 0, min_new_tokens: int = 0) -> Generated:
        """Sample a response to each prompt, as `generation.generate` does with the same `decoding`: greedy, or at
        its temperature, top-k and top-p; up to `max_new_tokens`, stopping at the end of turn or EOS
        (`chat.stop_ids`), that token kept. Row i is sampled with seed `seed + i`, so a rollout is the same
        whatever else the engine ran before it. `min_new_tokens` forces that many tokens first (the memory
        budget's worst case)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.wake()
        batch = left_padded_prompts(tokenizer, prompts, max_prompt_length)
        ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
        stop = chat.stop_ids(tokenizer)
        params = [SamplingParams(
            n=1, max_tokens=decoding.max_new_tokens, min_tokens=min_new_tokens, stop_token_ids=stop,
            temperature=0.0 if decoding.greedy else decoding.temperature,
            top_k=0 if decoding.greedy else decoding.top_k, top_p=1.0 if decoding.greedy else decoding.top_p,
            seed=seed + i, logprobs=0, detokenize=False, skip_special_tokens=False) for i in range(len(ids))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=row) for row in ids], params,
                                    lora_request=self.lora, use_tqdm=False)
        responses = [list(out.outputs[0].token_ids) for out in outputs]
        logprobs = [[step[token].logprob for step, token in zip(out.outputs[0].logprobs, response)]
                    for out, response in zip(outputs, responses)]
        width = max(max(map(len, responses)), 1)
        pad = tokenizer.pad_token_id
        response_ids = torch.tensor([r + [pad] * (width - len(r)) for r in responses])
        engine_logprobs = torch.tensor([lp + [0.0] * (width - len(lp)) for lp in logprobs])
        out = join_generated([(batch["input_ids"], batch["attention_mask"], response_ids)], tokenizer, prompts)
        out.logprobs = engine_logprobs * out.response_mask
        return out

    def close(self) -> None:
        """Free the engine's memory now (the process may go on to load another)."""
        self.use_adapter(None)
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self._own_view:
            shutil.rmtree(self._view, ignore_errors=True)
