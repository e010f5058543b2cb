import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hydra_core.config.settings import DataConfig
from hydra_core.data.loaders import load_demonstrations, load_preferences
from hydra_core.data import chat
from hydra_core.data.schema import DataError, Demonstration, Message, PreferencePair

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def load(fmt, source, **kw):
    return load_preferences(DataConfig(format=fmt, source=str(source), **kw), progress=False)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- good records, every format ---------------------------------------------------------------


def test_generic():
    pairs = load("generic", FIXTURES / "generic.jsonl").records
    assert len(pairs) == 12
    assert pairs[0] == PreferencePair("Why does the sky blue?",
                                      "A short, correct explanation of why the sky blue.",
                                      "No idea.", source=f"{FIXTURES / 'generic.jsonl'}:line 1")


def test_hh_rlhf_splits_transcripts_at_the_last_assistant_turn_into_messages():
    pairs = load("hh-rlhf", FIXTURES / "hh_rlhf.jsonl").records
    assert len(pairs) == 6
    multi_turn = pairs[1]
    assert multi_turn.prompt == (Message("user", "Hi there."), Message("assistant", "Hello! How can I help?"),
                                 Message("user", "Tell me why ice float."))
    assert multi_turn.chosen == "Here is why ice float: a clear explanation."
    assert multi_turn.rejected == "I would rather not say."
    assert multi_turn.source.endswith("hh_rlhf.jsonl:line 2")
    # without a chat template the messages read exactly as the transcript did
    raw = json.loads((FIXTURES / "hh_rlhf.jsonl").read_text().splitlines()[1])
    assert chat.transcript(multi_turn.prompt) + chat.response_text(None, multi_turn.prompt, multi_turn.chosen) \
        == raw["chosen"]


def test_stack_exchange_paired_prefers_response_j():
    pair = load("stack-exchange-paired", FIXTURES / "stack_exchange_paired.jsonl").records[0]
    assert pair.prompt == "Question: How do I reverse a list in Python?\n\nAnswer: "
    assert pair.chosen == "Use the standard tool to reverse a list in Python."
    assert pair.rejected == "You can't reverse a list in Python."


def test_tldr_prompt_choice_and_leading_space():
    pairs = load("tldr", FIXTURES / "tldr.jsonl").records
    first, odd, bare = pairs[0], pairs[1], pairs[3]
    assert first.prompt == ("SUBREDDIT: r/relationships\nTITLE: Advice needed #0\nPOST: My roommate "
                            "keeps eating my food and I don't know how to bring it up.\nTL;DR:")
    assert (first.chosen, first.rejected) == (" summary A of post 0", " summary B of post 0")
    assert (odd.chosen, odd.rejected) == (" summary B of post 1", " summary A of post 1")  # choice 1
    assert bare.prompt == ("POST: I want to learn to cook but I always burn things.\nTL;DR:")


def test_demonstrations():
    demos = load_demonstrations(str(FIXTURES / "demonstrations.jsonl"), progress=False).records
    assert demos[1] == Demonstration("What is 2 + 2?", "4",
                                     source=f"{FIXTURES / 'demonstrations.jsonl'}:line 2")


# --- file kinds -------------------------------------------------------------------------------


def test_json_array_and_json_lines_and_parquet_give_the_same_pairs(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "generic.jsonl").read_text().splitlines()]
    (tmp_path / "array.json").write_text(json.dumps(rows, indent=2))
    shutil.copy(FIXTURES / "generic.jsonl", tmp_path / "lines.json")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "table.parquet")

    expected = [(p.prompt, p.chosen, p.rejected) for p in load("generic", FIXTURES / "generic.jsonl").records]
    for name, where in (("array.json", "row 3"), ("lines.json", "line 3"), ("table.parquet", "row 3")):
        pairs = load("generic", tmp_path / name).records
        assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == expected
        assert pairs[2].source == f"{tmp_path / name}:{where}"


def test_parquet_bad_row_names_row_and_field(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"prompt": "p1", "chosen": "a", "rejected": "b"},
        {"prompt": "p2", "chosen": None, "rejected": "b"},
    ]), path)
    with pytest.raises(DataError, match=re.escape(f"{path}:row 2, field 'chosen': is missing")):
        load("generic", path)


def test_hub_path_through_load_dataset(tmp_path, monkeypatch):
    """A directory is not a file, so it goes through datasets.load_dataset like a hub id."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(FIXTURES / "tldr.jsonl", repo / "train.jsonl")
    rows = [json.loads(line) for line in (FIXTURES / "tldr.jsonl").read_text().splitlines()]
    rows[1]["choice"] = 2
    write_jsonl(repo / "validation.jsonl", rows)

    train = load("tldr", repo, dataset_split="train").records
    assert [p.chosen for p in train] == [p.chosen for p in load("tldr", FIXTURES / "tldr.jsonl").records]
    assert train[3].prompt.startswith("POST: ")  # nulls filled in by Arrow count as absent
    assert train[0].source == f"{repo}[train]:row 1"

    with pytest.raises(DataError, match=re.escape(f"{repo}[validation]:row 2, field 'choice'")):
        load("tldr", repo, dataset_split="validation")
    with pytest.raises(DataError, match=re.escape(f"{repo}[test]: cannot load dataset")):
        load("tldr", repo, dataset_split="test")


# --- bad input --------------------------------------------------------------------------------

GOOD = {
    "generic": {"prompt": "p", "chosen": "a", "rejected": "b"},
    "hh-rlhf": {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
    "stack-exchange-paired": {"question": "q", "response_j": "a", "response_k": "b"},
    "tldr": {"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0},
}
BAD = [
    ("generic", '{"prompt": "p", "chosen": ', None, "malformed JSON"),
    ("generic", '[1, 2]', None, "expected a JSON object"),
    ("generic", {"prompt": "p", "rejected": "b"}, "chosen", "is missing"),
    ("generic", {"prompt": " ", "chosen": "a", "rejected": "b"}, "prompt", "is empty"),
    ("generic", {"prompt": "p", "chosen": ["a"], "rejected": "b"}, "chosen", "expected a string, got list"),
    ("generic", {"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected", "identical to 'chosen'"),
    ("hh-rlhf", {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: b"}, "chosen", "Assistant"),
    ("hh-rlhf", {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: yo\n\nAssistant: b"},
     "rejected", "does not share"),
    ("hh-rlhf", {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: a"},
     "rejected", "identical"),
    ("stack-exchange-paired", {"question": "", "response_j": "a", "response_k": "b"}, "question", "is empty"),
    ("stack-exchange-paired", {"question": "q", "response_j": "a"}, "response_k", "is missing"),
    ("tldr", {"info": {"title": "t"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0},
     "info.post", "is missing"),
    ("tldr", {"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 2},
     "choice", "expected 0 or 1"),
    ("tldr", {"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": True},
     "choice", "expected 0 or 1"),
    ("tldr", {"info": {"post": "p"}, "summaries": [{"text": "a"}], "choice": 0}, "summaries", "2 summaries"),
    ("tldr", {"info": {"post": "p"}, "summaries": [{"text": "a"}, {"note": "b"}], "choice": 0},
     "summaries.1.text", "is missing"),
]


@pytest.mark.parametrize("fmt,bad,field,problem", BAD)
def test_bad_record_names_file_line_and_field(tmp_path, fmt, bad, field, problem):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD[fmt], bad])
    with pytest.raises(DataError) as err:
        load(fmt, path)
    message = str(err.value)
    assert f"{path}:line 2" in message
    assert problem in message
    if field:
        assert f"field '{field}'" in message


def test_bad_demonstration(tmp_path):
    path = write_jsonl(tmp_path / "demos.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "p"}])
    with pytest.raises(DataError, match=re.escape(f"{path}:line 2, field 'response': is missing")):
        load_demonstrations(str(path), progress=False)


def test_empty_file_and_missing_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=re.escape(f"{empty}: has no records")):
        load("generic", empty)
    with pytest.raises(DataError, match="no such file"):
        load("generic", tmp_path / "absent.jsonl")


def test_skip_bad_counts_by_reason_and_keeps_examples():
    path = FIXTURES / "generic_mixed.jsonl"
    with pytest.raises(DataError, match=re.escape(f"{path}:line 2, field 'chosen': is empty")):
        load("generic", path)

    result = load("generic", path, skip_bad=True)
    assert [p.source for p in result.records] == [f"{path}:line 1", f"{path}:line 10"]
    assert result.skipped == {
        "field 'chosen': is empty": 2,
        "field 'rejected': is identical to 'chosen'; a pair must differ": 1,
        "malformed JSON (Expecting ',' delimiter)": 1,
        "field 'chosen': is missing": 1,
        "field 'chosen': expected a string, got int": 1,
        "expected a JSON object": 1,
    }
    assert len(result.skipped_examples) == 5
    assert result.skipped_examples[0] == f"{path}:line 2, field 'chosen': is empty"


def test_skip_bad_with_nothing_good_is_still_an_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"}] * 3)
    with pytest.raises(DataError, match=r"has no valid records \(skipped 3"):
        load("generic", path, skip_bad=True)


def test_max_records_counts_good_records():
    result = load("generic", FIXTURES / "generic_mixed.jsonl", skip_bad=True, max_records=1)
    assert len(result.records) == 1
    assert result.skipped == {}  # stopped before reading the bad lines
    assert len(load("generic", FIXTURES / "generic.jsonl", max_records=5).records) == 5
