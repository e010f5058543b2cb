"""Conversational data and chat templates: the conversational format (explicit and implicit prompts,
messages demonstrations) and its bad records; one rendering of a prompt in SFT, reward training,
reward scoring, PPO's rollouts and eval; the end-of-turn token as EOS; `chat_template` none and FILE;
truncation (prompts from the left, responses from the right) and its counts."""

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_ppo_config, tiny_sft_config
from hydra_core.config.fields import ConfigError, build
from hydra_core.config.settings import DataConfig, EvalConfig, ModelInitConfig, SFTConfig
from hydra_core.data import chat, encoding
from hydra_core.data.loaders import load_demonstrations, load_preferences
from hydra_core.data.prepare import prepare
from hydra_core.data.schema import DataError, Message
from hydra_core.data.splits import load_split, read_manifest
from hydra_core.eval import runner
from hydra_core.models.generation import response_mask_after_eos
from hydra_core.models.hydra import load_hydra, reward_scores
from hydra_core.models.presets import build_base_model
from hydra_core.ppo import rollouts as ppo_rollouts
from hydra_core.ppo import trainer as ppo_trainer
from hydra_core.sft.trainer import run_sft

FIXTURES = Path(__file__).parent / "fixtures" / "data"
EXPLICIT, IMPLICIT = FIXTURES / "conversational_explicit.jsonl", FIXTURES / "conversational_implicit.jsonl"
DEMOS = FIXTURES / "conversational_demonstrations.jsonl"


def load(source, **kw):
    return load_preferences(DataConfig(format="conversational", source=str(source), **kw), progress=False)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return str(build_base_model(ModelInitConfig(preset="tiny-qwen2", output_dir=str(tmp_path_factory.mktemp("q")))))


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat-data")
    prepare(DataConfig(format="conversational", source=str(EXPLICIT), eval_fraction=0.25, output_dir=str(out)),
            progress=False)
    return str(out)


@pytest.fixture(scope="module")
def qwen_hydra_sft(tmp_path_factory, qwen_dir, chat_data):
    out = tmp_path_factory.mktemp("qwen-sft")
    run_sft(tiny_sft_config(qwen_dir, chat_data, str(out), steps=2, demo_batch_size=4, pair_batch_size=2,
                            eval_every=2, greedy_eval_prompts=2), progress=False)
    return str(out)


# --- the conversational format -------------------------------------------------------------------


def test_explicit_prompts_keep_their_messages_and_answers_become_text():
    pairs = load(EXPLICIT).records
    assert len(pairs) == 16
    assert pairs[1].prompt == (Message("system", "You are a concise science tutor."),
                               Message("user", "Can you explain why ice floats?"))
    assert pairs[2].prompt[:2] == (Message("user", "Hi!"), Message("assistant", "Hello! What would you like to know?"))
    assert (pairs[1].chosen, pairs[1].rejected) == ("Sure. Here is a short, correct explanation of why ice floats.",
                                                   "I don't know, look it up.")


def test_implicit_prompts_are_the_turns_both_conversations_share():
    pair = load(IMPLICIT).records[0]
    assert pair.prompt == (Message("user", "Can you explain why the sky is blue?"),)  # the text `prompt` is unused
    assert pair.chosen == "Sure. Here is a short, correct explanation of why the sky is blue."
    assert pair.rejected == "I don't know, look it up."


def test_explicit_answers_may_be_a_message_or_text_and_a_text_prompt_is_one_user_turn(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi?", "chosen": {"role": "assistant", "content": "Hello."},
                                               "rejected": "Go away."}])
    pair = load(path).records[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Hi?", "Hello.", "Go away.")


def test_messages_demonstrations_end_on_the_assistant_turn():
    demos = load_demonstrations(str(DEMOS), progress=False).records
    assert demos[2].prompt[-1] == Message("user", "Can you explain how vaccines work?")
    assert demos[2].response.startswith("In short: Sure.")


OK_PROMPT = [{"role": "user", "content": "hi"}]
BAD_RECORDS = [
    ({"prompt": [{"role": "robot", "content": "hi"}], "chosen": "a", "rejected": "b"}, "prompt[0].role", "robot"),
    ({"prompt": [], "chosen": "a", "rejected": "b"}, "prompt", "empty conversation"),
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "chosen": "a",
      "rejected": "b"}, "prompt[1].role", "ends on an assistant turn"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "prompt[0].content", "is missing"),
    ({"prompt": "hi there", "chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": "c"}, "chosen", "holds 2 messages"),
    ({"prompt": OK_PROMPT, "chosen": [{"role": "assistant", "content": " "}], "rejected": "b"}, "chosen[0].content",
     "empty"),
    ({"chosen": OK_PROMPT + [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}, "rejected",
     "does not share"),
    ({"chosen": OK_PROMPT + [{"role": "assistant", "content": "a"}], "rejected": OK_PROMPT}, "rejected[0].role",
     "ends on a user turn"),
    ({"prompt": 7, "chosen": "a", "rejected": "b"}, "prompt", "expected a list of messages"),
    ({"prompt": OK_PROMPT, "chosen": "a", "rejected": "a"}, "rejected", "identical"),
]


@pytest.mark.parametrize("row,field,problem", BAD_RECORDS, ids=[f"{f}-{p}" for _, f, p in BAD_RECORDS])
def test_a_bad_conversational_record_names_file_line_and_field(tmp_path, row, field, problem):
    good = {"prompt": OK_PROMPT, "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "data.jsonl", [good, row])
    with pytest.raises(DataError) as e:
        load(path)
    assert str(e.value).startswith(f"{path}:line 2, field '{field}': ")
    assert problem in str(e.value)
    assert len(load(path, skip_bad=True).records) == 1  # --skip-bad steps over it


def test_a_bad_messages_demonstration_names_its_field(tmp_path):
    path = write_jsonl(tmp_path / "demos.jsonl", [{"messages": [{"role": "assistant", "content": "alone"}]}])
    with pytest.raises(DataError, match=r"line 1, field 'messages': holds only the answer"):
        load_demonstrations(str(path), progress=False)


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_prepared_conversations_read_back_as_they_were_written(tmp_path, output_format):
    out = tmp_path / "data"
    prepare(DataConfig(format="conversational", source=str(EXPLICIT), demonstrations=str(DEMOS), eval_fraction=0.25,
                       output_format=output_format, output_dir=str(out)), progress=False)
    loaded = {p.prompt: p for p in load(EXPLICIT).records}
    for pair in load_split(out, "pairs_train") + load_split(out, "pairs_eval"):
        assert (pair.chosen, pair.rejected) == (loaded[pair.prompt].chosen, loaded[pair.prompt].rejected)
    assert all(isinstance(p.prompt, tuple) for p in load_split(out, "prompts_train"))
    assert read_manifest(out)["lengths"]["prompt"]["max"] > 40  # characters of the prompts' transcripts


def test_text_demonstrations_beside_conversation_pairs_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"demonstrations.jsonl:line 1, field 'prompt': is text while the pairs' "
                                         r"prompts .* are conversations"):
        prepare(DataConfig(format="conversational", source=str(EXPLICIT), output_dir=str(tmp_path / "d"),
                           demonstrations=str(FIXTURES / "demonstrations.jsonl")), progress=False)


# --- one rendering everywhere ----------------------------------------------------------------------


def _templated_ids(tokenizer, prompt) -> list[int]:
    messages = [{"role": m.role, "content": m.content} for m in prompt]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


def test_a_prompt_is_rendered_by_the_template_identically_in_sft_reward_rollout_and_eval(
        tmp_path, monkeypatch, qwen_hydra_sft, chat_data):
    model = load_hydra(qwen_hydra_sft, heads=("reward",), dtype=torch.float32).eval()
    tok = model.tokenizer
    pair = load_split(chat_data, "pairs_train")[0]
    expected = _templated_ids(tok, pair.prompt)
    assert tok.decode(expected).startswith("<|im_start|>system") and tok.decode(expected).endswith("assistant\n")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert chat.end_of_turn_id(tok) == end

    # SFT: the demonstration row is the rendered prompt, then the answer and the end of turn, which carry the loss
    demo = encoding.lm_batch(tok, [load_split(chat_data, "demos_train")[0]], 512)
    row = demo["input_ids"][0].tolist()
    n = len(expected)
    assert row[:n] == expected and row[-1] == end
    assert (demo["labels"][0][:n] == encoding.IGNORE_INDEX).all() and demo["labels"][0][n] != encoding.IGNORE_INDEX
    # reward training: chosen and rejected rows both start with it
    pairs = encoding.pair_batch(tok, [pair], 512)
    assert all(r[:n] == expected for r in _unpadded(pairs["input_ids"], pairs["attention_mask"]))
    # reward scoring (the reward-model judge, the served reward model): the reward of exactly that row
    answer = [*tok(pair.chosen, add_special_tokens=False)["input_ids"], end]
    ids = torch.tensor([expected + answer])
    by_hand = model(ids, torch.ones_like(ids), lm=False, reward=True).rewards.item()
    assert reward_scores(model, [(pair.prompt, pair.chosen)]) == [pytest.approx(by_hand, abs=1e-6)]

    # PPO's rollouts and eval's responses: the prompts generation was given, as tokens
    seen = []

    def recording(generate_in):
        def wrapped(model, prompts, *args, **kw):
            out = generate_in(model, prompts, *args, **kw)
            seen.extend(zip(prompts, _unpadded(out.query_ids, out.query_mask)))
            return out
        return wrapped

    monkeypatch.setattr(ppo_rollouts, "generate", recording(ppo_rollouts.generate))
    ppo_trainer.run_ppo(tiny_ppo_config(qwen_hydra_sft, chat_data, tmp_path / "ppo", steps=1, rollout_batch_size=16,
                                        mini_batch_size=8), progress=False)
    rollout = dict(seen)
    seen.clear()
    monkeypatch.setattr(runner, "generate", recording(runner.generate))
    runner.run_eval(EvalConfig(candidate=str(tmp_path / "ppo"), baseline=qwen_hydra_sft, prompts=chat_data,
                               judge="reward-model", max_prompts=4, output_dir=str(tmp_path / "eval")))
    judged = dict(seen)
    assert pair.prompt in rollout and rollout[pair.prompt] == expected
    for prompt, ids in [*rollout.items(), *judged.items()]:
        assert ids == _templated_ids(tok, prompt)
    assert len(judged) == 4


def test_generation_stops_at_the_end_of_turn_and_ppo_counts_it_as_eos(qwen_hydra_sft):
    model = load_hydra(qwen_hydra_sft, heads=(), dtype=torch.float32)
    tok = model.tokenizer
    end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    assert chat.stop_ids(tok) == [end]  # Qwen's eos is its end of turn
    mask, ended = response_mask_after_eos(torch.tensor([[5, end, 7, 7], [5, 6, 7, 8], [5, 6, 2, end]]), [end, 2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]] and ended.tolist() == [True, False, True]
    assert eos == end


def test_llama3s_end_of_turn_is_eot_id_and_without_a_template_it_is_eos(tmp_path):
    llama3 = load_hydra(str(build_base_model(ModelInitConfig(preset="tiny-llama3", output_dir=str(tmp_path / "l")))),
                        heads=()).tokenizer
    eot = llama3.convert_tokens_to_ids("<|eot_id|>")
    assert chat.end_of_turn_id(llama3) == eot and chat.stop_ids(llama3) == [eot, llama3.eos_token_id]
    ids = encoding.prompt_ids(llama3, (Message("user", "hi"),))
    assert ids[0] == llama3.bos_token_id and ids[1] != llama3.bos_token_id  # the template's one BOS, not two
    neox = load_hydra(str(build_base_model(ModelInitConfig(preset="tiny-gpt-neox", output_dir=str(tmp_path / "n")))),
                      heads=()).tokenizer
    assert chat.end_of_turn_id(neox) == neox.eos_token_id


def test_without_a_template_a_conversation_reads_as_its_hh_transcript(tmp_path, qwen_dir):
    plain = load_hydra(qwen_dir, heads=(), chat_template="none").tokenizer
    assert not chat.uses_template(plain)
    prompt = (Message("user", "Hi."), Message("assistant", "Hello."), Message("user", "Why?"))
    row, n = encoding.encode_pair_of(plain, prompt, "Because.", 512)
    assert plain.decode(row[:n]) == "\n\nHuman: Hi.\n\nAssistant: Hello.\n\nHuman: Why?\n\nAssistant:"
    assert plain.decode(row[n:]) == " Because.<|im_end|>"
    assert chat.generated_response(plain, prompt, " Because.") == "Because."


def test_a_template_file_replaces_the_tokenizers_own(tmp_path, qwen_dir):
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}"
                        "{% if add_generation_prompt %}<<assistant>>{% endif %}")
    tok = load_hydra(qwen_dir, heads=(), chat_template=str(template)).tokenizer
    assert tok.decode(encoding.prompt_ids(tok, "Why?")) == "<<user>>Why?<<assistant>>"
    assert chat.end_of_turn_id(tok) == tok.eos_token_id  # this template writes no end of turn


def test_bad_chat_template_settings_are_one_line_naming_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^--chat-template: 'nope.jinja': no such file"):
        build(SFTConfig, ({"chat_template": "nope.jinja"}, lambda n: "--" + n.replace("_", "-")))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    with pytest.raises(ConfigError, match=r"^--chat-template: .*broken.jinja: not a Jinja template"):
        build(EvalConfig, ({"chat_template": str(broken)}, lambda n: "--" + n.replace("_", "-")))


def test_a_prompt_the_template_cannot_render_stops_sft_naming_the_record(tmp_path, qwen_dir, chat_data):
    template = tmp_path / "no-system.jinja"
    template.write_text("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system "
                        "turns') }}{% endif %}{{ m['content'] }}{% endfor %}")
    cfg = tiny_sft_config(qwen_dir, chat_data, str(tmp_path / "sft"), steps=1, chat_template=str(template))
    with pytest.raises(DataError, match=r"conversational_explicit.jsonl:line \d+, field 'prompt': the tokenizer's chat "
                                        r"template cannot render it: no system turns"):
        run_sft(cfg, progress=False)
    assert not (tmp_path / "sft" / "metrics.jsonl").exists() or not (tmp_path / "sft" / "metrics.jsonl").read_text()


# --- truncation ---------------------------------------------------------------------------------


def test_a_long_prompt_keeps_its_end_and_its_bos_and_a_long_response_its_start(tmp_path):
    tok = load_hydra(str(build_base_model(ModelInitConfig(preset="tiny-llama3", output_dir=str(tmp_path / "l")))),
                     heads=()).tokenizer
    prompt = (Message("user", "word " * 200), Message("assistant", "ok"), Message("user", "the last question?"))
    whole = encoding.prompt_ids(tok, prompt)
    kept = encoding.encode_prompt(tok, prompt, 32)
    assert len(kept) == 32 and kept[0] == tok.bos_token_id and kept[1:] == list(whole[-31:])
    row, n = encoding.encode_pair_of(tok, prompt, "answer " * 100, 64)
    assert len(row) == 64 and n == 32  # a long answer leaves the prompt half of the row
    assert row[n:] == list(encoding.response_ids(tok, prompt, "answer " * 100)[:32])
    short, n_short = encoding.encode_pair_of(tok, prompt, "yes", 64)  # a short answer leaves it the rest
    assert short[n_short:] == list(encoding.response_ids(tok, prompt, "yes")) and len(short) == 64


def test_the_manifest_and_the_sft_summary_count_what_the_limits_cut(tmp_path, qwen_dir):
    long_prompt = [{"role": "user", "content": "tell me " * 60}]
    rows = [{"prompt": [{"role": "user", "content": f"q{i}?"}], "chosen": "yes " * (40 if i % 2 else 1),
             "rejected": "no"} for i in range(10)] + [{"prompt": long_prompt, "chosen": "a", "rejected": "b"}] * 2
    source = write_jsonl(tmp_path / "long.jsonl", rows)
    out = tmp_path / "data"
    manifest = prepare(DataConfig(format="conversational", source=str(source), eval_fraction=0.3, tokenizer=qwen_dir,
                                  max_length=64, max_prompt_length=48, output_dir=str(out)), progress=False)
    cut = manifest["truncation"]
    pairs = [p for split in ("pairs_train", "pairs_eval") for p in load_split(out, split)]
    assert cut["pairs_train"]["records"] + cut["pairs_eval"]["records"] == len(pairs) == 12
    assert cut["pairs_train"]["prompts_cut"] + cut["pairs_eval"]["prompts_cut"] == 2  # the two long prompts
    assert cut["pairs_train"]["responses_cut"] + cut["pairs_eval"]["responses_cut"] == 5  # the five long answers
    assert cut["prompts_train"]["prompts_cut"] + cut["prompts_eval"]["prompts_cut"] == 1  # one distinct long prompt
    summary = run_sft(tiny_sft_config(qwen_dir, str(out), str(tmp_path / "sft"), steps=1, max_length=64,
                                      demo_batch_size=4, pair_batch_size=2, greedy_eval_prompts=2), progress=False)
    assert summary["truncation"]["pairs_train"] == cut["pairs_train"]
    assert summary["truncation"]["demos_train"]["records"] == len(load_split(out, "demos_train"))


def test_hh_rlhf_transcripts_are_rendered_as_messages_where_the_model_has_a_template(qwen_dir):
    tok = load_hydra(qwen_dir, heads=()).tokenizer
    hh = DataConfig(format="hh-rlhf", source=str(FIXTURES / "hh_rlhf.jsonl"))
    pair = load_preferences(hh, progress=False).records[1]
    text = tok.decode(encoding.prompt_ids(tok, pair.prompt))
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nHi there.<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                    "<|im_start|>user\nTell me why ice float.<|im_end|>\n<|im_start|>assistant\n")
    assert "Human:" not in text and tok.decode(encoding.response_ids(tok, pair.prompt, pair.chosen)) == \
        "Here is why ice float: a clear explanation.<|im_end|>"
