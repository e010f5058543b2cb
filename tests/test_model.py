import http.server
import json
import re
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hydra_core.data.encoding import left_padded_prompts, pair_batch
from hydra_core.data.schema import PreferencePair
from hydra_core.models.hydra import CONFIG_FILE, last_token_index, load_hydra
from hydra_core.models.lora import add_lora
from hydra_core.models.presets import char_tokenizer
from hydra_core.models.reference import ModelReferenceError, check_model


def test_char_tokenizer_round_trips_text_and_loads_with_autotokenizer(base_model_dir):
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    text = "23+48=71\n\nHuman: hi!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.eos_token_id == char_tokenizer().eos_token_id


def test_base_model_is_a_plain_hf_directory(base_model_dir):
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    n = sum(p.numel() for p in model.parameters())
    assert 0.8e6 < n < 1.3e6  # the ~1M-parameter tiny preset
    assert model.config.tie_word_embeddings


def test_last_token_index_for_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


def test_reward_does_not_depend_on_padding_side(base_model_dir):
    model = load_hydra(base_model_dir, heads=("reward",)).eval()
    tok = model.tokenizer
    pairs = [PreferencePair("1+1=", "2", "3"), PreferencePair("10+15=", "25", "24")]
    right = pair_batch(tok, pairs, 64)
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(right["input_ids"], right["attention_mask"])]
    width = max(map(len, rows))
    left_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    left_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        r_right = model(**right, lm=False, reward=True).rewards
        r_left = model(left_ids, left_mask, lm=False, reward=True).rewards
    torch.testing.assert_close(r_right, r_left, rtol=1e-5, atol=1e-5)


def test_hydra_round_trip_gives_identical_logits_and_rewards(tmp_path, hydra_sft_dir):
    model = load_hydra(hydra_sft_dir, heads=("reward", "value")).eval()
    batch = left_padded_prompts(model.tokenizer, ["12+34=46", "99+1=100"], 64)
    with torch.no_grad():
        before = model(**batch, reward=True, value=True)
    model.save(tmp_path / "copy")
    again = load_hydra(str(tmp_path / "copy"), heads=("reward", "value")).eval()
    with torch.no_grad():
        after = again(**batch, reward=True, value=True)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.rewards, after.rewards)
    assert torch.equal(before.values, after.values)
    config = json.loads((tmp_path / "copy" / CONFIG_FILE).read_text())
    assert config["kind"] == "hydra-sft" and config["heads"] == ["reward", "value"]


def test_heads_read_in_fp32_under_bf16_autocast(hydra_sft_dir):
    model = load_hydra(hydra_sft_dir, heads=("reward", "value")).eval()
    batch = left_padded_prompts(model.tokenizer, ["12+34=46", "99+1=100"], 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch, reward=True, value=True)
    assert out.logits.dtype == torch.bfloat16  # the backbone's matmuls did run in bf16
    assert out.rewards.dtype == out.values.dtype == torch.float32
    with torch.no_grad():  # the same hidden states through the head in full precision
        expected = model.heads["value"](out.hidden.float()).squeeze(-1)
    torch.testing.assert_close(out.values, expected, rtol=0, atol=0)
    torch.testing.assert_close(out.rewards, out.values[:, -1], rtol=1e-6, atol=1e-6)  # left padding: last column


def test_value_head_starts_as_a_copy_of_the_reward_head(hydra_sft_dir):
    model = load_hydra(hydra_sft_dir, heads=("reward", "value"))
    assert torch.equal(model.heads["value"].weight, model.heads["reward"].weight)


def test_export_merges_lora_into_a_plain_causal_lm(tmp_path, hydra_sft_dir):
    model = load_hydra(hydra_sft_dir, heads=("reward",)).eval()
    add_lora(model, rank=4, alpha=8)
    with torch.no_grad():  # make the adapter non-zero so merging matters
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    batch = left_padded_prompts(model.tokenizer, ["12+34="], 64)
    with torch.no_grad():
        expected = model(**batch).logits
    model.export_policy(tmp_path / "plain")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    assert not (tmp_path / "plain" / CONFIG_FILE).exists()
    with torch.no_grad():
        got = plain(**batch, position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_trust_remote_code_is_off_by_default():
    import inspect

    assert inspect.signature(load_hydra).parameters["trust_remote_code"].default is False


def test_cli_export_writes_a_directory_without_heads(tmp_path, hydra_sft_dir):
    from hydra_core.cli import main

    assert main(["export", "--model", hydra_sft_dir, "--output-dir", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "model.safetensors").exists()
    assert not (tmp_path / "x" / CONFIG_FILE).exists()
    AutoModelForCausalLM.from_pretrained(tmp_path / "x")


# --- model references, resolved before any work ------------------------------------------------------


@pytest.fixture
def hub(monkeypatch):
    """A stand-in for the Hugging Face hub's model API on 127.0.0.1 that knows one model."""
    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server interface
            self.send_response(200 if self.path == "/api/models/known/model" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield
    server.shutdown()


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "nope", "no such directory"),
    (lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt", "is a file; a model is a directory"),
    (lambda tmp: tmp, "not a model directory; missing: config.json, weights"),
    (lambda tmp: (tmp / "manifest.json").write_text("{}") and tmp, "(it is a prepared data directory)"),
])
def test_a_local_reference_must_hold_a_model(tmp_path, make, message):
    with pytest.raises(ModelReferenceError, match=rf"^model {tmp_path}.*{re.escape(message)}"):
        check_model(str(make(tmp_path)), "model")


def test_an_empty_reference_is_refused_by_name():
    with pytest.raises(ModelReferenceError, match=r"^candidate: is empty; give a model directory or a hub id$"):
        check_model("", "candidate")


def test_a_model_directory_is_accepted_and_names_what_is_missing(base_model_dir, tmp_path):
    assert check_model(base_model_dir, "model") == base_model_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((Path(base_model_dir) / name).read_bytes())
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelReferenceError, match=r"missing: weights \(model.safetensors or pytorch_model.bin\)$"):
        check_model(str(tmp_path), "baseline")


def test_a_hub_id_is_looked_up_once_with_one_line_when_it_fails(hub, monkeypatch):
    assert check_model("known/model", "model") == "known/model"
    with pytest.raises(ModelReferenceError, match=r"has no model of that name .*HTTP 404"):
        check_model("unknown/model", "model")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelReferenceError, match=r"not in the Hugging Face cache, and the hub .* cannot be reached"):
        check_model("known/model", "reward_model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelReferenceError, match="while HF_HUB_OFFLINE is set"):
        check_model("known/model", "model")


def test_stages_refuse_a_wrong_model_before_training(tmp_path, arithmetic_dir, capsys):
    from hydra_core import cli

    for argv in (["sft", "--model", str(arithmetic_dir)], ["ppo", "--model", str(tmp_path / "none")],
                 ["eval", "--candidate", str(arithmetic_dir), "--baseline", str(arithmetic_dir)]):
        assert cli.main([*argv, "--data" if argv[0] != "eval" else "--prompts", arithmetic_dir,
                         "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("not a model directory" in err or "no such directory" in err), err
