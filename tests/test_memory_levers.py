"""The memory levers of a 1-8B run: which modules LoRA wraps (`--lora-target-modules`), gradient checkpointing in
PPO's training passes (`--gradient-checkpointing`), and a frozen backbone quantised by bitsandbytes
(`--quantize-backbone`). The quantisation tests skip where bitsandbytes is not installed (CI installs only the test
extra); the errors a run without it gets are tested everywhere."""

import importlib.util
import json
import shutil
import sys
import types

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import logged_rows, step_zero_logprobs, tiny_ppo_config, tiny_sft_config
from hydra_core import checkpoint, cli
from hydra_core.memory import model_memory
from hydra_core.models.hydra import HydraModel, decoder_layers, load_hydra
from hydra_core.models.lora import add_lora, check_lora_targets, wrapped_modules
from hydra_core.models.presets import char_tokenizer
from hydra_core.ppo.roles import PolicyStack
from hydra_core.ppo.trainer import SUMMARY_FILE, run_ppo
from hydra_core.sft.trainer import SUMMARY_FILE as SFT_SUMMARY_FILE
from hydra_core.sft.trainer import run_sft

needs_bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                        reason="bitsandbytes is not installed (pip install 'hydra-rlhf[quantization]')")
LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
QUICK = dict(steps=2, rollout_batch_size=4, mini_batch_size=2, max_new_tokens=4, eval_every=0, greedy_eval_prompts=4,
             mixed_precision="no")


def refused(argv, capsys) -> str:
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- LoRA target modules ---------------------------------------------------------------------------


def test_lora_goes_on_the_named_modules_and_the_summaries_record_them(tmp_path, base_model_dir, hydra_sft_dir,
                                                                      arithmetic_dir):
    cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, lora_target_modules="q_proj, v_proj")
    stack = PolicyStack(cfg, torch.device("cpu"))
    wrapped = [name for name, m in stack.policy_model.base_model.named_modules() if isinstance(m, BaseTunerLayer)]
    assert sorted({name.rsplit(".", 1)[-1] for name in wrapped}) == ["q_proj", "v_proj"] and len(wrapped) == 8
    assert wrapped_modules(stack.unique_modules()) == {"lora_modules": ["q_proj", "v_proj"], "lora_wrapped_modules": 8}

    run_sft(tiny_sft_config(base_model_dir, arithmetic_dir, str(tmp_path / "sft"), steps=1, demo_batch_size=2,
                            pair_batch_size=2, max_length=64, greedy_eval_prompts=4, lora_rank=4,
                            lora_target_modules="self_attn.o_proj"), progress=False)
    summary = json.loads((tmp_path / "sft" / SFT_SUMMARY_FILE).read_text())
    assert (summary["lora_modules"], summary["lora_wrapped_modules"]) == (["o_proj"], 4)


def test_a_target_that_matches_nothing_is_one_line_listing_the_models_linear_modules(tmp_path, capsys, hydra_sft_dir,
                                                                                     arithmetic_dir):
    out = tmp_path / "out"
    err = refused(["ppo", "--lora-target-modules", "q_proj,qproj", "--model", hydra_sft_dir, "--data", arithmetic_dir,
                   "--output-dir", str(out)], capsys)
    assert (f"--lora-target-modules: 'qproj' matches no linear module of the decoder layers of {hydra_sft_dir}; "
            f"they have: {', '.join(LLAMA_LINEAR)}") in err
    assert not (out / "ppo_config.json").exists()  # refused before any work


def test_all_linear_on_gpt2_wraps_its_conv1d_layers_and_not_the_output_layer(tmp_path):
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=len(char_tokenizer()))
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    char_tokenizer().save_pretrained(tmp_path)
    check_lora_targets(str(tmp_path), "all-linear")
    with pytest.raises(ValueError, match=r"'q_proj' matches no linear module .*; they have: c_attn, c_fc, c_proj$"):
        check_lora_targets(str(tmp_path), "q_proj")

    model = load_hydra(str(tmp_path), heads=("reward",), dtype=torch.float32)
    assert [name for name, _ in decoder_layers(model.base_model)] == ["transformer.h.0", "transformer.h.1"]
    add_lora(model, rank=4, alpha=8)
    assert wrapped_modules([model]) == {"lora_modules": ["c_attn", "c_fc", "c_proj"], "lora_wrapped_modules": 8}
    assert not isinstance(model.base_model.lm_head, BaseTunerLayer)
    ids = torch.randint(4, 90, (2, 6))
    out = model(ids, torch.ones_like(ids), reward=True)
    (out.logits.sum() + out.rewards.sum()).backward()
    lora_b = [p for name, p in model.backbone.named_parameters() if "lora_B" in name]
    assert len(lora_b) == 8 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)

    only = HydraModel(GPT2LMHeadModel(config), char_tokenizer(), heads=())
    add_lora(only, rank=4, alpha=8, target_modules="mlp.c_proj")  # a dotted suffix tells apart the two c_proj
    wrapped = [name for name, m in only.base_model.named_modules() if isinstance(m, BaseTunerLayer)]
    assert wrapped == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]


# --- gradient checkpointing ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["hydra", "full"])
def test_gradient_checkpointing_changes_no_loss_and_no_trained_weight(tmp_path, hydra_sft_dir, arithmetic_dir,
                                                                      variant):
    runs = {}
    for checkpointing in (False, True):
        out = tmp_path / str(checkpointing)
        run_ppo(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, out, variant=variant,
                                gradient_checkpointing=checkpointing, **QUICK), progress=False)
        runs[checkpointing] = (logged_rows(out / "metrics.jsonl"), load_file(out / "model.safetensors"))
    (rows, weights), (rows_checkpointed, weights_checkpointed) = runs[False], runs[True]
    # Exactly: the recomputation is the same operations on the same inputs, in the same autocast and RNG state.
    assert rows == rows_checkpointed
    assert rows[1]["objective/kl"] == 0.0
    assert weights.keys() == weights_checkpointed.keys()
    assert all(torch.equal(weights[k], weights_checkpointed[k]) for k in weights)


def test_checkpointed_layers_recompute_in_backward_in_eval_mode_and_only_with_gradients(tmp_path, hydra_sft_dir,
                                                                                        arithmetic_dir):
    stack = PolicyStack(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, gradient_checkpointing=True),
                        torch.device("cpu"))
    model = stack.policy_model
    assert not any(m.training for m in model.modules())  # dropout stays off
    calls = []
    for _, layer in decoder_layers(model.base_model):
        layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation stops inside the mlp
    ids = torch.randint(4, 90, (2, 6))
    with torch.no_grad():
        stack.actor_forward(ids, torch.ones_like(ids), None, with_values=False)
    assert len(calls) == 4  # no gradients: each of the 4 layers runs once
    calls.clear()
    out = stack.actor_forward(ids, torch.ones_like(ids), None, with_values=False)
    assert len(calls) == 4
    out.logits.sum().backward()
    assert len(calls) == 8  # backward ran each layer again
    assert all(p.grad is not None for p in stack.actor_params)


# --- a quantised backbone --------------------------------------------------------------------------


def test_without_bitsandbytes_a_quantised_run_is_one_line_before_any_work(tmp_path, capsys, monkeypatch,
                                                                          hydra_sft_dir, arithmetic_dir):
    argv = ["ppo", "--quantize-backbone", "4bit", "--model", hydra_sft_dir, "--data", arithmetic_dir,
            "--output-dir", str(tmp_path / "out")]
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import` finds where it is not installed
    err = refused(argv, capsys)
    assert ("--quantize-backbone 4bit: needs bitsandbytes, an optional extra: pip install 'hydra-rlhf[quantization]'"
            in err)

    def no_kernel(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel for this CPU")
    broken = types.SimpleNamespace(__version__="0.0", nn=types.SimpleNamespace(Linear4bit=no_kernel))
    monkeypatch.setitem(sys.modules, "bitsandbytes", broken)
    err = refused(argv, capsys)
    assert "--quantize-backbone 4bit: bitsandbytes 0.0 cannot run 4bit layers on cpu here (no 4-bit kernel" in err
    assert not (tmp_path / "out" / "ppo_config.json").exists()


@needs_bitsandbytes
@pytest.mark.parametrize("variant,bits", [("hydra", "4bit"), ("j-hydra", "4bit"), ("lora-dynamic", "4bit"),
                                          ("hydra", "8bit")])
def test_a_quantised_backbone_starts_at_kl_zero_with_fp32_heads_adapters_and_rewards(tmp_path, hydra_sft_dir,
                                                                                     arithmetic_dir, variant, bits):
    import bitsandbytes as bnb

    cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, variant=variant, quantize_backbone=bits,
                          mixed_precision="no")
    stack = PolicyStack(cfg, torch.device("cpu"))
    actor_lp, ref_lp, scores = step_zero_logprobs(stack, arithmetic_dir)
    assert torch.equal(actor_lp, ref_lp)  # exactly: the reference is the same quantised weights, adapters off
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    layer = bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt
    for model in stack.unique_modules():
        assert model.base_model.get_decoder().layers[0].self_attn.q_proj.base_layer.__class__ is layer
        for name, p in model.named_parameters():
            if name.startswith("heads.") or "lora_" in name:
                assert p.dtype == torch.float32, name


@needs_bitsandbytes
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_gradients_through_a_quantised_backbone_are_the_same_after_a_no_grad_pass(tmp_path, hydra_sft_dir,
                                                                                 arithmetic_dir, bits):
    # A rollout (no grad, eval mode) comes before every training pass; on some CPUs bitsandbytes would then repack
    # its 4-bit layers into a format without a backward (models.quantization.keep_differentiable)
    ids = torch.randint(4, 90, (2, 6), generator=torch.Generator().manual_seed(1))
    grads = []
    for sampled_first in (False, True):
        torch.manual_seed(0)
        cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, quantize_backbone=bits, mixed_precision="no")
        stack = PolicyStack(cfg, torch.device("cpu"))
        if sampled_first:
            with torch.no_grad():
                stack.actor_forward(ids, torch.ones_like(ids), None, with_values=False)
        (stack.actor_forward(ids, torch.ones_like(ids), None, with_values=False).logits ** 2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in stack.actor_params]))
    assert grads[0].abs().max() > 0 and torch.equal(grads[0], grads[1])


@needs_bitsandbytes
def test_memory_figures_count_quantised_weights_as_parameters_with_their_scales(tmp_path, hydra_sft_dir,
                                                                                arithmetic_dir):
    figures = {}
    for bits in ("no", "8bit", "4bit"):
        cfg = tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, quantize_backbone=bits, mixed_precision="no")
        figures[bits] = model_memory(PolicyStack(cfg, torch.device("cpu")).unique_modules())
    assert figures["no"]["memory/params"] == figures["8bit"]["memory/params"] == figures["4bit"]["memory/params"]
    # 8-bit: a byte per weight of the 28 quantised layers instead of 4, plus a float32 scale per output row
    stack = PolicyStack(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, tmp_path, mixed_precision="no"),
                        torch.device("cpu"))
    layers = [m.base_layer for m in stack.policy_model.base_model.modules() if isinstance(m, BaseTunerLayer)]
    weights, rows = sum(m.weight.numel() for m in layers), sum(m.weight.shape[0] for m in layers)
    assert figures["8bit"]["memory/param_bytes"] == figures["no"]["memory/param_bytes"] - 3 * weights + 4 * rows
    assert figures["4bit"]["memory/param_bytes"] < figures["no"]["memory/param_bytes"] - 3.4 * weights


@needs_bitsandbytes
def test_a_quantised_run_saves_a_full_precision_policy_and_resumes_exactly(tmp_path, hydra_sft_dir, arithmetic_dir):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    settings = dict(quantize_backbone="4bit", checkpoint_every=1, **QUICK)
    summary = run_ppo(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, straight, **settings), progress=False)
    assert summary["objective/kl"] != 0.0 and logged_rows(straight / "metrics.jsonl")[1]["objective/kl"] == 0.0
    assert summary["memory/params"] == json.loads((straight / SUMMARY_FILE).read_text())["memory/params"]

    # The policy is the SFT backbone's own fp32 weights plus the trained adapter, not a dequantised 4-bit copy.
    saved, sft = load_file(straight / "model.safetensors"), load_file(f"{hydra_sft_dir}/model.safetensors")
    assert all(t.dtype == torch.float32 for t in saved.values())
    assert "quantization_config" not in json.loads((straight / "config.json").read_text())
    trained = load_file(checkpoint.latest(straight) / checkpoint.WEIGHTS)
    prefix = "hydra.backbone.base_model.model.model.layers.0.self_attn.q_proj"
    delta = trained[f"{prefix}.lora_B.actor.weight"] @ trained[f"{prefix}.lora_A.actor.weight"] * (16 / 4)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert delta.abs().max() > 0 and torch.allclose(saved[key], sft[key] + delta, atol=1e-6)

    shutil.copytree(straight, resumed)
    shutil.rmtree(checkpoint.latest(resumed))  # as if killed after step 1's checkpoint
    (resumed / SUMMARY_FILE).unlink()
    (resumed / "model.safetensors").unlink()
    run_ppo(tiny_ppo_config(hydra_sft_dir, arithmetic_dir, resumed, resume=True, **settings), progress=False)
    assert logged_rows(resumed / "metrics.jsonl") == logged_rows(straight / "metrics.jsonl")
    again = load_file(resumed / "model.safetensors")
    assert all(torch.equal(again[k], saved[k]) for k in saved)
