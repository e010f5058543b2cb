"""`--memory-budget`: the search on a fake measure, the probes on the tiny model (each a fresh process), the
choice a run trains with, a resumed run keeping it, and the errors (nothing fits, a probe that fails, a
bad value)."""

import json
import shutil
import sys
from dataclasses import replace

import pytest
from conftest import tiny_ppo_config

from hydra_core import cli
from hydra_core.ppo import budget as B
from hydra_core.ppo.trainer import run_ppo

PROMPTS = 12  # the small data's training prompts: the search's cap


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, arithmetic_dir):
    """The arithmetic data with only PROMPTS training prompts, so a search reaches its cap in few probes."""
    out = tmp_path_factory.mktemp("small-data") / "data"
    shutil.copytree(arithmetic_dir, out)
    path = out / "prompts_train.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:PROMPTS]))
    return str(out)


def fake(boundary: int):
    """A `fits` that holds up to `boundary`, and the batches it was asked, in order."""
    asked: list[int] = []

    def fits(batch: int) -> bool:
        assert batch not in asked, f"batch {batch} probed twice"
        asked.append(batch)
        return batch <= boundary
    return fits, asked


@pytest.mark.parametrize("start", [1, 3, 37, 38, 100, 256])
@pytest.mark.parametrize("boundary", [1, 2, 37, 499, 500])
def test_the_search_finds_the_exact_boundary_from_any_start_up_or_down(start, boundary):
    fits, asked = fake(boundary)
    assert B.search_largest(fits, start=start, cap=500) == (boundary, boundary == 500)
    assert asked[0] == start  # it starts where the config's batch is


def test_the_search_doubles_up_from_a_fit_halves_down_from_a_miss_and_honours_the_cap():
    fits, asked = fake(37)
    assert B.search_largest(fits, start=4, cap=1000) == (37, False)
    assert asked[:6] == [4, 8, 16, 32, 64, 48]
    fits, asked = fake(37)
    assert B.search_largest(fits, start=256, cap=1000) == (37, False)
    assert asked[:4] == [256, 128, 64, 32]
    fits, asked = fake(10**6)
    assert B.search_largest(fits, start=3, cap=20) == (20, True)  # it fits at the cap: maybe more would
    assert asked == [3, 6, 12, 20]
    fits, asked = fake(10**6)
    assert B.search_largest(fits, start=64, cap=20) == (20, True)  # a start past the cap starts at it
    assert asked == [20]


def test_the_search_stops_within_its_tolerance_and_reports_nothing_fitting_as_0():
    fits, asked = fake(37)
    best, _ = B.search_largest(fits, start=256, cap=1000, tolerance=0.1)
    assert 37 - max(1, int(0.1 * best)) <= best <= 37 and len(asked) < 9
    fits, asked = fake(0)
    assert B.search_largest(fits, start=8, cap=100) == (0, False)
    assert asked == [8, 4, 2, 1]
    fits, asked = fake(3)
    assert B.search_largest(fits, start=4, cap=100, floor=4) == (0, False)  # the benchmark's --min-batch
    assert asked == [4]


def test_the_watched_runner_returns_what_the_process_wrote_or_why_it_wrote_nothing(tmp_path):
    result = tmp_path / "result.json"
    write = f"import json; open({str(result)!r}, 'w').write(json.dumps({{'status': 'ok', 'peak_bytes': 5}}))"
    done = B.run_watched([sys.executable, "-c", write], result)
    assert done["status"] == "ok" and done["peak_bytes"] == 5 and done["wall_s"] > 0
    assert B.verdict(done, 5) == "fits" and B.verdict(done, 4) == "over"
    result.unlink()
    slow = B.run_watched([sys.executable, "-c", "import time; time.sleep(30)"], result, timeout=0.5)
    assert slow["status"] == "timeout" and slow["wall_s"] < 10
    broken = B.run_watched([sys.executable, "-c", "raise SystemExit('no such model')"], result)
    assert broken["status"] == "error" and "no such model" in broken["error"]
    hungry = B.run_watched([sys.executable, "-c", "x = b'x' * (400 * 2**20); import time; time.sleep(30)"], result,
                           watch_bytes=100 * 2**20)
    assert hungry["status"] == "killed" and hungry["watched_peak_bytes"] > 100 * 2**20 and hungry["wall_s"] < 10


@pytest.mark.slow
def test_a_generous_budget_picks_a_larger_batch_and_the_run_trains_with_it(tmp_path, hydra_sft_dir, small_data):
    out = tmp_path / "ppo"
    cfg = tiny_ppo_config(hydra_sft_dir, small_data, out, steps=1, rollout_batch_size=6, memory_budget="16GiB",
                          device="cpu")
    summary = run_ppo(cfg, progress=False)
    search = summary["memory_budget_search"]
    assert search == json.loads((out / B.BUDGET_FILE).read_text())
    assert (search["rollout_batch_size"], search["capped"], search["cap"]) == (PROMPTS, True, PROMPTS)
    assert [(p["batch"], p["status"]) for p in search["probes"]] == [(6, "fits"), (12, "fits")]
    assert all(0 < p["peak_bytes"] <= search["budget_bytes"] and p["seconds"] > 0 for p in search["probes"])
    assert search["budget_bytes"] == 16 * 2**30 and search["device"] == "cpu"
    trained = json.loads((out / "ppo_config.json").read_text())
    assert trained["rollout_batch_size"] == PROMPTS and trained["memory_budget"] == "16GiB"


def test_a_budget_below_the_runtime_is_one_line_naming_the_flag_before_training(tmp_path, capsys, hydra_sft_dir,
                                                                               small_data):
    out = tmp_path / "ppo"
    argv = ["ppo", "--model", hydra_sft_dir, "--data", small_data, "--output-dir", str(out), "--device", "cpu",
            "--rollout-batch-size", "1", "--mini-batch-size", "0", "--memory-budget", "100MB"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert captured.err.startswith("hydra-rlhf ppo: error: --memory-budget 100MB: not even a rollout batch of 1 "
                                   "fits (its probe: killed, RSS ")
    assert "rollout batch 1 (1 responses): killed" in captured.out  # the probe's progress line
    record = json.loads((out / B.BUDGET_FILE).read_text())
    assert record["rollout_batch_size"] is None and [p["batch"] for p in record["probes"]] == [1]
    assert not (out / "ppo_summary.json").exists() and not (out / "metrics.jsonl").exists()


def test_a_probe_that_fails_for_another_reason_stops_the_search_with_its_output(tmp_path, small_data):
    cfg = tiny_ppo_config(str(tmp_path / "no-model"), small_data, tmp_path / "ppo", memory_budget="16GiB",
                          device="cpu")
    with pytest.raises(RuntimeError, match=r"(?s)probe of rollout batch 8 failed; its last output:.*no-model"):
        B.fit_rollout_batch(cfg, tmp_path / "ppo", progress=False)


def test_a_resumed_run_keeps_its_recorded_batch_and_a_new_budget_searches_again(tmp_path, small_data, monkeypatch):
    def measure(cfg, batch, budget, cuda):  # a fake probe: batches up to 5 fit
        asked.append(batch)
        return {"batch": batch, "status": "fits" if batch <= 5 else "over", "peak_bytes": batch, "seconds": 0.1}

    asked: list[int] = []
    monkeypatch.setattr(B, "measure_batch", measure)
    cfg = tiny_ppo_config("model", small_data, tmp_path, rollout_batch_size=8, memory_budget="2GiB", device="cpu")
    chosen, record = B.fit_rollout_batch(cfg, tmp_path, progress=False)
    assert chosen == replace(cfg, rollout_batch_size=5) and asked == [8, 4, 6, 5]
    assert json.loads((tmp_path / B.BUDGET_FILE).read_text()) == record

    asked.clear()
    again, reused = B.fit_rollout_batch(replace(cfg, resume=True), tmp_path, progress=False)
    assert again.rollout_batch_size == 5 and asked == [] and reused["reused"]
    other, _ = B.fit_rollout_batch(replace(cfg, resume=True, memory_budget="3GiB"), tmp_path, progress=False)
    assert asked == [8, 4, 6, 5]  # another budget: the record does not hold, so it searches
    assert json.loads((tmp_path / B.BUDGET_FILE).read_text())["memory_budget"] == "3GiB"


def test_a_bad_memory_budget_is_refused_naming_the_flag_or_the_parameter(tmp_path, capsys):
    assert cli.main(["ppo", "--memory-budget", "lots", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == ("hydra-rlhf ppo: error: --memory-budget: 'lots' is not a positive byte size "
                   "(try 20GiB, 1500MB or 123456)\n")
    assert cli.main(["run", "--output-dir", str(tmp_path / "run"), "-p", "ppo_memory_budget=0GiB"]) == 2
    assert "pipeline parameter ppo_memory_budget: '0GiB' is not a positive byte size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
