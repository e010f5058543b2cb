import json
import sys
import types
from pathlib import Path

import pytest

from hydra_core.config.settings import DataConfig
from hydra_core.data.loaders import load_preferences
from hydra_core.data.prepare import prepare
from hydra_core.data.schema import DataError, Demonstration, EvalPrompt, PreferencePair
from hydra_core.data.splits import MANIFEST, SPLIT_FILES, load_split, read_manifest

FIXTURES = Path(__file__).parent / "fixtures" / "data"
GENERIC = str(FIXTURES / "generic.jsonl")


def run(tmp_path, name="out", **kw):
    cfg = DataConfig(output_dir=str(tmp_path / name), **{"format": "generic", "source": GENERIC,
                                                           "eval_fraction": 0.3, **kw})
    return cfg, prepare(cfg, progress=False)


def splits(out):
    return {name: load_split(out, name) for name in SPLIT_FILES}


def prompts(records):
    return {r.prompt for r in records}


def test_split_is_by_prompt_and_covers_every_pair(tmp_path):
    cfg, _ = run(tmp_path)
    s = splits(cfg.output_dir)
    train, evals = s["pairs_train"], s["pairs_eval"]
    assert not prompts(train) & prompts(evals)
    assert len(prompts(evals)) == 3  # round(10 distinct prompts * 0.3)
    all_pairs = load_preferences(cfg, progress=False).records
    assert sorted(p.source for p in train + evals) == sorted(p.source for p in all_pairs)
    for split in ("train", "eval"):
        group = s[f"pairs_{split}"]
        assert prompts(s[f"demos_{split}"]) <= prompts(group)
        assert [p.prompt for p in s[f"prompts_{split}"]] == list(dict.fromkeys(p.prompt for p in group))
        assert all(p.reference == "" for p in s[f"prompts_{split}"])


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    cfg_a, _ = run(tmp_path, "a", seed=1)
    cfg_b, _ = run(tmp_path, "b", seed=1)
    cfg_c, _ = run(tmp_path, "c", seed=2)
    for name in SPLIT_FILES:
        a = Path(cfg_a.output_dir, f"{name}.jsonl").read_text()
        assert a == Path(cfg_b.output_dir, f"{name}.jsonl").read_text()
    eval_a = prompts(load_split(cfg_a.output_dir, "pairs_eval"))
    assert eval_a != prompts(load_split(cfg_c.output_dir, "pairs_eval"))


def test_demonstrations_from_chosen_responses(tmp_path):
    cfg, _ = run(tmp_path)
    s = splits(cfg.output_dir)
    demos = s["demos_train"] + s["demos_eval"]
    # 12 pairs, but one repeats a (prompt, chosen) that is kept once
    assert len(demos) == 11
    pairs = s["pairs_train"] + s["pairs_eval"]
    assert {(d.prompt, d.response) for d in demos} == {(p.prompt, p.chosen) for p in pairs}


def test_separate_demonstrations_follow_the_pairs_split(tmp_path):
    demo_file = str(FIXTURES / "demonstrations.jsonl")
    cfg, manifest = run(tmp_path, demonstrations=demo_file, eval_fraction=0.5)
    s = splits(cfg.output_dir)
    demos = s["demos_train"] + s["demos_eval"]
    assert {(d.prompt, d.response) for d in demos} == {
        (json.loads(line)["prompt"], json.loads(line)["response"])
        for line in Path(demo_file).read_text().splitlines()}
    shared = prompts(demos) & prompts(s["pairs_train"] + s["pairs_eval"])
    assert shared == {"Why does ice float?", "Why does the sky blue?"}
    for prompt in shared:
        in_eval = prompt in prompts(s["pairs_eval"])
        assert (prompt in prompts(s["demos_eval"])) == in_eval
    assert not prompts(s["prompts_train"]) & prompts(s["prompts_eval"])
    assert prompts(s["prompts_eval"]) == prompts(s["pairs_eval"]) | prompts(s["demos_eval"])
    assert manifest["demonstrations"] == demo_file


def test_manifest(tmp_path):
    cfg, manifest = run(tmp_path, skip_bad=True, source=str(FIXTURES / "generic_mixed.jsonl"),
                        eval_fraction=0.5)
    assert read_manifest(cfg.output_dir) == manifest
    assert manifest["task"] == "generic"
    assert manifest["source"] == cfg.source
    assert manifest["seed"] == 0
    assert manifest["config"]["skip_bad"] is True and manifest["config"]["output_dir"] == cfg.output_dir
    assert manifest["files"] == {name: f"{name}.jsonl" for name in SPLIT_FILES}
    assert manifest["counts"] == {name: len(records) for name, records in splits(cfg.output_dir).items()}
    assert manifest["counts"]["pairs_train"] + manifest["counts"]["pairs_eval"] == 2
    assert manifest["skipped"]["pairs"]["total"] == 7
    assert manifest["skipped"]["pairs"]["by_reason"]["field 'chosen': is empty"] == 2
    assert manifest["skipped"]["pairs"]["examples"][0].endswith("line 2, field 'chosen': is empty")
    lengths = {len("Why is the sky blue?"), len("Why is ice slippery?")}
    assert manifest["lengths"]["prompt"]["max"] == max(lengths)
    assert manifest["lengths"]["rejected"] == {"mean": 6.0, "p50": 6, "p95": 6, "max": 6}
    assert manifest["created_with"].startswith("hydra-rlhf ")


@pytest.mark.parametrize("fmt,name", [("hh-rlhf", "hh_rlhf"), ("stack-exchange-paired", "stack_exchange_paired"),
                                      ("tldr", "tldr")])
def test_every_file_format_prepares(tmp_path, fmt, name):
    cfg, manifest = run(tmp_path, format=fmt, source=str(FIXTURES / f"{name}.jsonl"))
    assert manifest["counts"]["pairs_train"] + manifest["counts"]["pairs_eval"] == 6
    assert manifest["counts"]["pairs_eval"] == 2  # round(6 * 0.3)


def test_parquet_output_replaces_an_earlier_jsonl_run(tmp_path):
    cfg, _ = run(tmp_path)
    jsonl = splits(cfg.output_dir)
    cfg, manifest = run(tmp_path, output_format="parquet")
    out = Path(cfg.output_dir)
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "prepare_config.json"]
                                                           + [f"{n}.parquet" for n in SPLIT_FILES])
    assert manifest["files"]["pairs_train"] == "pairs_train.parquet"
    assert splits(out) == jsonl


def test_too_small_to_split(tmp_path):
    source = tmp_path / "one_prompt.jsonl"
    source.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                      '{"prompt": "p", "chosen": "a", "rejected": "c"}\n')
    with pytest.raises(DataError, match=r"too small to split: split 'pairs_eval' would be empty"):
        run(tmp_path, source=str(source))
    assert not (tmp_path / "out").exists()


def test_failed_run_leaves_the_previous_directory_alone(tmp_path):
    cfg, manifest = run(tmp_path)
    with pytest.raises(DataError):
        run(tmp_path, source=str(FIXTURES / "generic_mixed.jsonl"))
    assert read_manifest(cfg.output_dir) == manifest


def test_arithmetic_delegates_to_build_task(tmp_path, monkeypatch):
    pair = PreferencePair("1+1=", "2", "3", source="gen:1")
    demo, prompt = Demonstration("1+1=", "2", source="gen:1"), EvalPrompt("1+1=", "2", source="gen:1")
    task = {"pairs_train": [pair], "pairs_eval": [pair], "demos_train": [demo], "demos_eval": [demo],
            "prompts_train": [prompt], "prompts_eval": [prompt], "task_info": {"operand_digits": 3}}
    fake = types.ModuleType("hydra_core.data.arithmetic")
    fake.build_task = lambda cfg: task
    monkeypatch.setitem(sys.modules, "hydra_core.data.arithmetic", fake)

    cfg = DataConfig(output_dir=str(tmp_path / "arith"))
    manifest = prepare(cfg, progress=False)
    assert manifest["operand_digits"] == 3 and manifest["task"] == "arithmetic"
    assert manifest["counts"] == {name: 1 for name in SPLIT_FILES}
    assert load_split(cfg.output_dir, "prompts_eval") == [prompt]


# --- broken files and half-written or mixed folders ------------------------------------------------


def test_a_lone_surrogate_is_a_bad_record_named_by_file_line_and_field(tmp_path):
    source = tmp_path / "surrogate.jsonl"
    lines = ['{"prompt": "p\\ud83d", "chosen": "a", "rejected": "b"}'] + [
        f'{{"prompt": "q{i}", "chosen": "a", "rejected": "b"}}' for i in range(4)]
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"^{source}:line 1, field 'prompt': holds a lone surrogate"):
        run(tmp_path, source=str(source))
    assert not (tmp_path / "out").exists()
    _, manifest = run(tmp_path, source=str(source), skip_bad=True)
    assert manifest["skipped"]["pairs"]["total"] == 1
    assert manifest["counts"]["pairs_train"] + manifest["counts"]["pairs_eval"] == 4


def test_a_binary_file_is_named_with_its_line(tmp_path):
    source = tmp_path / "model.jsonl"
    source.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(DataError, match=rf"^{source}:line 1: is not UTF-8 text \(byte 0x80\); is it a binary file"):
        run(tmp_path, source=str(source))
    parquet = tmp_path / "fake.parquet"
    parquet.write_text("not parquet")
    with pytest.raises(DataError, match=rf"^{parquet}: is not a readable Parquet file"):
        run(tmp_path, source=str(parquet))


def test_skip_bad_says_what_it_left_out_when_too_little_is_left(tmp_path):
    source = tmp_path / "mostly_bad.jsonl"
    source.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                      '{"prompt": "q", "chosen": "", "rejected": "b"}\n'
                      '{"prompt": "r", "chosen": "", "rejected": "b"}\n{"prompt": "s"}\n')
    with pytest.raises(DataError, match=r"would be empty.*--skip-bad left out 3 pairs \(2 with field 'chosen': is "
                                        r"empty, 1 with field 'chosen': is missing\)"):
        run(tmp_path, source=str(source), skip_bad=True)


def test_a_folder_is_read_only_as_its_manifest_lists_it(tmp_path):
    cfg, _ = run(tmp_path)
    out = Path(cfg.output_dir)
    (out / "pairs_train.parquet").write_bytes(b"left over")  # a file the manifest does not list is ignored
    assert load_split(out, "pairs_train") == splits(out)["pairs_train"]
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["files"]["demos_eval"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest.json, field 'files': does not list a 'demos_eval' split"):
        load_split(out, "demos_eval")
    (out / MANIFEST).unlink()
    with pytest.raises(DataError, match=r"no manifest.json, so not a finished prepared data directory"):
        load_split(out, "pairs_train")


def test_preparing_replaces_the_whole_folder_or_nothing(tmp_path, monkeypatch):
    import hydra_core.data.prepare as prepare_module

    cfg, manifest = run(tmp_path)
    before = {p.name: p.read_bytes() for p in Path(cfg.output_dir).iterdir()}

    def fail_midway(records, path):
        raise OSError("disk full")

    monkeypatch.setattr(prepare_module, "write_records", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, seed=9)
    assert {p.name: p.read_bytes() for p in Path(cfg.output_dir).iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_prepare_refuses_to_replace_a_folder_that_is_not_prepared_data(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"exists and is not a prepared data directory"):
        run(tmp_path)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
