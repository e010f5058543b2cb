"""Every `init-model` preset: an ordinary HF directory of the named architecture, with a tokenizer of
its family's kind, built the same every time; the tiny-<architecture> stand-ins run under Hydra and
LoRA; the Llama presets are the models they were before the stand-ins came."""

import hashlib
import unicodedata

import pytest
import torch
from tokenizers import models
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM,
                          PreTrainedTokenizerFast, Qwen2ForCausalLM)
from transformers.pytorch_utils import Conv1D

from hydra_core import cli
from hydra_core.config.settings import MODEL_PRESETS, ModelInitConfig
from hydra_core.models.hydra import load_hydra
from hydra_core.models.lora import add_lora
from hydra_core.models.presets import build_base_model, char_tokenizer, model_config, preset

EOT = "<|endoftext|>"
# The real families' tokens: which play bos / eos / unk (None: the family has none), the other special
# tokens, whether the model ties its output embedding to its input one. None has a pad token.
STAND_INS = {
    "tiny-gpt-neox": dict(architecture=GPTNeoXForCausalLM, bos=EOT, eos=EOT, unk=EOT, others=(), tied=False),
    "tiny-qwen2": dict(architecture=Qwen2ForCausalLM, bos=None, eos="<|im_end|>", unk=None,
                       others=(EOT, "<|im_start|>"), tied=True),
    "tiny-llama3": dict(architecture=LlamaForCausalLM, bos="<|begin_of_text|>", eos="<|end_of_text|>", unk=None,
                        others=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), tied=True),
    "tiny-gpt2": dict(architecture=GPT2LMHeadModel, bos=EOT, eos=EOT, unk=EOT, others=(), tied=True),
}
# Seed 0's weights as the code before the stand-ins built them (sha256 of weights_digest).
LLAMA_WEIGHTS = {
    "tiny-llama": "005c50353ba01f5cefe8d88ad0f143513de6ccd8c11cc53eeb12dc399eefb94a",
    "llama-30m": "33d5eff721114219ede81782ae526b90aa66dbfcf6123d491f6e9c4176474709",
    "llama-120m": "ae6ec72f422210b782c3fd00fda04cca28a0d841f4565e5d0d60b196114e67f6",
}
# Too large to build in the suite (3.7 GiB of fp32 weights): its size is checked on the meta device.
GPU_SIZES = {"llama-1b": 1.0e9}
# NFC, as Qwen2's tokenizer normalizes text to it: other texts come back composed.
TEXT = "Grüße, 世界! naïve café 😀\n\tdef f(x):\n        return x ** 2  # ½\r\n\n23+48=71  "
CHAT = [{"role": "user", "content": "What is 23+48?"}, {"role": "assistant", "content": "71"},
        {"role": "user", "content": " And 15+27? \n"}]
SYSTEM = {"role": "system", "content": "Answer with a number."}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    return {name: build_base_model(ModelInitConfig(output_dir=str(root / name), preset=name)) for name in MODEL_PRESETS
            if name not in GPU_SIZES}


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_the_table_names_every_preset_here():
    assert set(STAND_INS) | set(LLAMA_WEIGHTS) | set(GPU_SIZES) == set(MODEL_PRESETS)


@pytest.mark.parametrize("name", GPU_SIZES)
def test_the_gpu_sizes_have_the_parameters_they_are_named_for(name):
    spec = preset(name)
    with torch.device("meta"):
        model = spec.architecture(model_config(spec, char_tokenizer()))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(GPU_SIZES[name], rel=0.05)


@pytest.mark.parametrize("name", [n for n in MODEL_PRESETS if n not in GPU_SIZES])
def test_every_preset_is_an_ordinary_hf_directory(built, name):
    model = AutoModelForCausalLM.from_pretrained(built[name])
    tokenizer = AutoTokenizer.from_pretrained(built[name])
    assert (built[name] / "init_model_config.json").is_file()
    assert model.config.vocab_size >= len(tokenizer)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)


@pytest.mark.parametrize("name", LLAMA_WEIGHTS)
def test_the_llama_presets_are_the_models_they_were(built, name):
    model = AutoModelForCausalLM.from_pretrained(built[name])
    tokenizer = AutoTokenizer.from_pretrained(built[name])
    assert weights_digest(model) == LLAMA_WEIGHTS[name]
    assert isinstance(tokenizer.backend_tokenizer.model, models.WordLevel)  # the character tokenizer
    assert tokenizer.pad_token == "<pad>"


@pytest.mark.parametrize("name", STAND_INS)
def test_a_stand_in_has_its_architecture_and_size(built, name):
    expected = STAND_INS[name]
    model = AutoModelForCausalLM.from_pretrained(built[name])
    assert type(model) is expected["architecture"]
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6
    assert model.config.max_position_embeddings >= 1024
    assert model.config.tie_word_embeddings is expected["tied"]
    tied = model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert tied is expected["tied"]


def test_tiny_gpt2s_attention_and_mlp_are_conv1d(built):
    model = AutoModelForCausalLM.from_pretrained(built["tiny-gpt2"])
    for block in model.transformer.h:
        assert all(isinstance(layer, Conv1D)
                   for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj))


@pytest.mark.parametrize("name", STAND_INS)
def test_a_stand_ins_tokenizer_is_its_familys_byte_level_bpe(built, name):
    expected = STAND_INS[name]
    tokenizer = AutoTokenizer.from_pretrained(built[name])
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert isinstance(tokenizer.backend_tokenizer.model, models.BPE)
    assert 1000 <= len(tokenizer) <= 2100
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        expected["bos"], expected["eos"], expected["unk"])
    assert tokenizer.pad_token is None
    for special in (expected["bos"], expected["eos"], *expected["others"]):
        if special:
            assert tokenizer.convert_ids_to_tokens(tokenizer(special, add_special_tokens=False)["input_ids"]) == [
                special]


@pytest.mark.parametrize("name", STAND_INS)
def test_any_text_round_trips_and_only_llama3_adds_bos(built, name):
    tokenizer = AutoTokenizer.from_pretrained(built[name])
    assert unicodedata.is_normalized("NFC", TEXT)
    bare = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    ids = tokenizer(TEXT)["input_ids"]
    assert tokenizer.decode(bare) == TEXT
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert ids == ([tokenizer.bos_token_id] if name == "tiny-llama3" else []) + bare
    assert len(bare) < len(TEXT.encode())  # the learnt merges join bytes


def test_tiny_qwen2s_chat_template_is_chatml_with_a_default_system_message(built):
    tokenizer = AutoTokenizer.from_pretrained(built["tiny-qwen2"])
    turns = ("<|im_start|>user\nWhat is 23+48?<|im_end|>\n<|im_start|>assistant\n71<|im_end|>\n"
             "<|im_start|>user\n And 15+27? \n<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + turns)
    assert tokenizer.apply_chat_template([SYSTEM, *CHAT], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nAnswer with a number.<|im_end|>\n" + turns)


def test_tiny_llama3s_chat_template_has_headers_and_stripped_turns(built):
    tokenizer = AutoTokenizer.from_pretrained(built["tiny-llama3"])
    turns = ("<|start_header_id|>user<|end_header_id|>\n\nWhat is 23+48?<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n71<|eot_id|>"
             "<|start_header_id|>user<|end_header_id|>\n\nAnd 15+27?<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == (
        "<|begin_of_text|>" + turns)
    assert tokenizer.apply_chat_template([SYSTEM, *CHAT], tokenize=False, add_generation_prompt=True) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer with a number.<|eot_id|>" + turns)


@pytest.mark.parametrize("name", ["tiny-gpt-neox", "tiny-gpt2"])
def test_the_families_without_a_chat_template_have_none(built, name):
    assert AutoTokenizer.from_pretrained(built[name]).chat_template is None


@pytest.mark.parametrize("name", STAND_INS)
def test_a_preset_and_seed_build_the_same_files_every_time(built, name, tmp_path):
    again = tmp_path / name
    assert cli.main(["init-model", "--preset", name, "--output-dir", str(again)]) == 0
    files = sorted(p.name for p in built[name].iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for file in files:
        if file != "init_model_config.json":  # it names its own output_dir
            assert (built[name] / file).read_bytes() == (again / file).read_bytes(), file


@pytest.mark.parametrize("name", STAND_INS)
def test_a_stand_in_runs_as_a_hydra_model_with_lora(built, name):
    model = load_hydra(str(built[name]), dtype=torch.float32)
    assert model.tokenizer.pad_token == model.tokenizer.eos_token  # load_hydra's padding, as for the real ones
    batch = model.tokenizer(["23+48=71", "Grüße 😀"], return_tensors="pt", padding=True)
    out = model(batch["input_ids"], batch["attention_mask"], reward=True, value=True)
    assert out.logits.shape == (*batch["input_ids"].shape, model.base_model.config.vocab_size)
    assert out.rewards.shape == (2,) and out.values.shape == batch["input_ids"].shape

    add_lora(model, 4, 8)
    adapted = [module for module in model.backbone.modules() if hasattr(module, "lora_A")]
    assert len(adapted) >= 4 * model.base_model.config.num_hidden_layers  # every decoder layer's linear layers
    if name == "tiny-gpt2":
        assert all(isinstance(module.base_layer, Conv1D) for module in adapted)
    after = model(batch["input_ids"], batch["attention_mask"], reward=True, value=True)
    assert torch.allclose(after.rewards, out.rewards, atol=1e-6)  # a fresh adapter changes nothing
