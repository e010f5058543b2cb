"""Win-rate statistics, the both-orders logic and verdict parsing: no model, no network."""

import json

import pytest

from hydra_core.eval.cache import JudgmentCache, judgment_key
from hydra_core.eval.openai_judge import parse_verdict, user_message
from hydra_core.eval.pairwise import PairResult, combine, tally
from hydra_core.eval.report import headline, write_report
from hydra_core.eval.stats import wilson_interval, win_rate


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10, 0.95)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(0, 10, 0.95)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(50, 100, 0.95)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)


def test_wilson_interval_narrows_with_confidence_and_handles_n0():
    wide, narrow = wilson_interval(30, 50, 0.99), wilson_interval(30, 50, 0.80)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, 1.0)


def test_ties_count_half():
    assert win_rate(0, 10, 0)["win_rate"] == 0.5
    assert win_rate(3, 2, 5)["win_rate"] == pytest.approx(0.4)
    all_ties = win_rate(0, 20, 0)
    assert all_ties["win_rate_low"] < 0.5 < all_ties["win_rate_high"]
    assert all_ties["interval"] == "wilson"


def test_win_rate_with_nothing_judged():
    summary = win_rate(0, 0, 0)
    assert summary["win_rate"] is None
    assert (summary["win_rate_low"], summary["win_rate_high"]) == (0.0, 1.0)


@pytest.mark.parametrize("as_a, as_b, outcome, consistent", [
    ("A", "B", "win", True),  # candidate preferred in both positions
    ("B", "A", "loss", True),
    ("tie", "tie", "tie", True),
    ("A", "A", "tie", False),  # the judge prefers the first position: flips with the order
    ("B", "B", "tie", False),
    ("A", "tie", "tie", False),
    ("tie", "A", "tie", False),
    ("error", "B", "error", None),
    ("A", "error", "error", None),
])
def test_combine_both_orders(as_a, as_b, outcome, consistent):
    assert combine(as_a, as_b) == (outcome, consistent)


def _result(outcome, consistent):
    return PairResult("1+1=", "2", "2", "3", True, True, "A", "B", outcome, consistent, "", "")


def test_tally_excludes_errors_from_bias_denominator():
    results = [_result("win", True), _result("tie", False), _result("loss", True), _result("error", None)]
    counts = tally(results)
    assert counts == {"pairs": 4, "wins": 1, "ties": 1, "losses": 1, "errors": 1, "judged": 3,
                      "inconsistent": 1, "position_bias": pytest.approx(1 / 3)}
    assert tally([_result("error", None)])["position_bias"] is None


@pytest.mark.parametrize("text, verdict", [
    ("A is right.\n[[A]]", "A"),
    ("[[B]]", "B"),
    ("Equally good. [[C]]", "tie"),
    ("I was told to answer [[A]] or [[B]]; B is better.\n[[B]]", "B"),
    ("A", "error"),
    ("[A]", "error"),
    ("", "error"),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_user_message_shows_reference_only_when_given():
    with_ref = user_message("1+2=", "3", "4", reference="3")
    assert "[Reference Answer]\n3" in with_ref
    assert "[Reference Answer]" not in user_message("1+2=", "3", "4")
    assert with_ref.index("Assistant A's Answer]\n3") < with_ref.index("Assistant B's Answer]\n4")


def test_cache_survives_reload_and_a_torn_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = JudgmentCache(path)
    key = judgment_key("model", "sys", "user")
    assert judgment_key("model", "sy", "suser") != key
    cache.put(key, model="model", verdict="A", rationale="why")
    with path.open("a") as f:
        f.write('{"key": "cut sho')
    assert JudgmentCache(path).get(key)["verdict"] == "A"
    assert JudgmentCache(path).get("other") is None


def test_report_with_nothing_judged_and_hostile_text(tmp_path):
    results = [PairResult("<script>alert(1)</script>", "", "a & b", "c", True, False, "error", "A", "error",
                          None, "timeout", "")]
    counts = tally(results)
    summary = {**counts, **win_rate(counts["wins"], counts["ties"], counts["losses"]),
               "decoding": {"greedy": True}, "judge": {"name": "openai"}}
    summary["headline"] = headline(summary)
    assert summary["headline"] == ("candidate vs baseline (openai judge): win-rate n/a [0.00, 1.00], "
                                   "W/T/L/E 0/0/0/1, position bias n/a")
    paths = write_report(tmp_path, results, summary)
    page = paths["report"].read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert json.loads(paths["summary"].read_text())["win_rate"] is None
    assert paths["chart"].stat().st_size > 0
