"""The judges end to end: the openai judge against a real local HTTP server that speaks the
chat-completions API, and the gold and reward-model judges on a tiny random model."""

import csv
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from hydra_core.config.settings import DataConfig, EvalConfig, ModelInitConfig
from hydra_core.data.arithmetic import is_correct
from hydra_core.data.prepare import prepare
from hydra_core.data.schema import DataError, EvalPrompt
from hydra_core.eval.judges import GoldJudge, JudgeConfigError, Response, RewardModelJudge
from hydra_core.eval.openai_judge import OpenAIJudge
from hydra_core.eval.pairwise import judge_pairs, tally
from hydra_core.eval.runner import load_prompts, run_eval
from hydra_core.models.hydra import load_hydra
from hydra_core.models.presets import build_base_model
from hydra_core.tracking.base import JsonlTracker

KEY_ENV = "HYDRA_EVAL_TEST_JUDGE_KEY"
KEY = "sk-test-9c1f0e7b5d3a-never-in-any-file"


# --- a chat-completions server on 127.0.0.1 ------------------------------------------------------

def verdict_reply(text, status=200, headers=None):
    body = {"id": "chatcmpl-test", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    return status, body, headers or {}


class ChatServer:
    """Records every request; `reply(request_json, authorization)` decides each answer."""

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        self.reply = lambda request, auth: verdict_reply("[[C]]")
        self.base_url = ""


@pytest.fixture
def chat_server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    state = ChatServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            auth = self.headers.get("Authorization", "")
            with state.lock:
                state.requests.append(request)
            if self.path != "/v1/chat/completions":
                status, body, headers = 404, {"error": "not found"}, {}
            elif auth != f"Bearer {KEY}":
                status, body, headers = 401, {"error": {"message": "invalid api key"}}, {}
            else:
                status, body, headers = state.reply(request, auth)
            payload = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


def make_openai_judge(server, tmp_path, **overrides):
    options = dict(cache_path=str(tmp_path / "cache.jsonl"), concurrency=4, timeout=5.0, max_retries=3,
                   retry_base_delay=0.001)
    return OpenAIJudge(server.base_url, "judge-model", KEY_ENV, **{**options, **overrides})


def answers_in(request):
    """The question and the two answers, read back from the judge prompt the server was sent."""
    text = request["messages"][-1]["content"]
    question = re.search(r"\[User Question\]\n(.*?)\n", text).group(1)
    a = re.search(r"Assistant A's Answer\]\n(.*?)\n\[The End", text, re.S).group(1)
    b = re.search(r"Assistant B's Answer\]\n(.*?)\n\[The End", text, re.S).group(1)
    return question, a, b


def prefers_correct(request, auth):
    question, a, b = answers_in(request)
    ok_a, ok_b = is_correct(question, a), is_correct(question, b)
    tag = "C" if ok_a == ok_b else ("A" if ok_a else "B")
    return verdict_reply(f"Checked the sums of {question}.\n[[{tag}]]")


def constructed_set():
    """(prompts, candidate, baseline, expected W/T/L): the truth is known for every pair."""
    cases = ([("right", "wrong")] * 6 + [("right", "right")] * 2 + [("wrong", "wrong")]
             + [("wrong", "right")] * 3)
    prompts, candidate, baseline = [], [], []
    for i, (c, b) in enumerate(cases):
        x, y = 10 + i, 20 + 2 * i
        prompts.append(EvalPrompt(f"{x}+{y}=", str(x + y)))
        # The two sides never give the same text, so no judgment is a cache hit of the other order.
        candidate.append(Response(str(x + y) if c == "right" else str(x + y + 1)))
        baseline.append(Response(f" {x + y}" if b == "right" else str(x + y - 1)))
    return prompts, candidate, baseline, (6, 3, 3)


# --- the openai judge on constructed pairs ------------------------------------------------------

def test_judge_always_answering_a_gives_ties_and_full_position_bias(chat_server, tmp_path):
    chat_server.reply = lambda request, auth: verdict_reply("The first one is better. [[A]]")
    prompts, candidate, baseline, _ = constructed_set()
    counts = tally(judge_pairs(make_openai_judge(chat_server, tmp_path), prompts, candidate, baseline,
                               progress=False))
    assert (counts["wins"], counts["ties"], counts["losses"], counts["errors"]) == (0, 12, 0, 0)
    assert counts["position_bias"] == 1.0
    assert all(r["model"] == "judge-model" and r["temperature"] == 0 for r in chat_server.requests)


def test_judge_preferring_the_correct_answer_gives_the_known_win_rate(chat_server, tmp_path):
    chat_server.reply = prefers_correct
    prompts, candidate, baseline, (wins, ties, losses) = constructed_set()
    results = judge_pairs(make_openai_judge(chat_server, tmp_path), prompts, candidate, baseline, progress=False)
    counts = tally(results)
    assert (counts["wins"], counts["ties"], counts["losses"], counts["errors"]) == (wins, ties, losses, 0)
    assert counts["position_bias"] == 0.0
    assert len(chat_server.requests) == 2 * len(prompts)
    first = results[0]
    assert (first.verdict_candidate_as_a, first.verdict_candidate_as_b, first.outcome) == ("A", "B", "win")
    assert "Checked the sums" in first.rationale_candidate_as_a


def test_garbage_replies_are_errors_not_a_crash(chat_server, tmp_path):
    chat_server.reply = lambda request, auth: verdict_reply("I like turtles.")
    prompts, candidate, baseline, _ = constructed_set()
    results = judge_pairs(make_openai_judge(chat_server, tmp_path), prompts, candidate, baseline, progress=False)
    counts = tally(results)
    assert (counts["errors"], counts["judged"], counts["position_bias"]) == (12, 0, None)
    assert "I like turtles" in results[0].rationale_candidate_as_a
    # A malformed body (not chat-completions JSON) is an error too.
    chat_server.reply = lambda request, auth: (200, "<html>proxy error</html>", {})
    assert tally(judge_pairs(make_openai_judge(chat_server, tmp_path), prompts[:2], candidate[:2],
                             baseline[:2], progress=False))["errors"] == 2


def test_rate_limits_are_retried_honouring_retry_after(chat_server, tmp_path):
    refusals = []

    def refuse_twice(request, auth):
        if len(refusals) < 2:
            refusals.append(1)
            # A base delay of 30 s would time the test out: finishing fast proves Retry-After was used.
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
        return prefers_correct(request, auth)

    chat_server.reply = refuse_twice
    prompts, candidate, baseline, _ = constructed_set()
    judge = make_openai_judge(chat_server, tmp_path, concurrency=1, retry_base_delay=30.0)
    start = time.monotonic()
    results = judge_pairs(judge, prompts[:1], candidate[:1], baseline[:1], progress=False)
    assert time.monotonic() - start < 10
    assert results[0].outcome == "win"
    assert len(chat_server.requests) == 2 + 2


def test_server_errors_are_retried_then_recorded_as_errors(chat_server, tmp_path):
    failures = []

    def fail_three_times(request, auth):
        if len(failures) < 3:
            failures.append(1)
            return 500, {"error": {"message": "overloaded"}}, {}
        return prefers_correct(request, auth)

    chat_server.reply = fail_three_times
    prompts, candidate, baseline, _ = constructed_set()
    results = judge_pairs(make_openai_judge(chat_server, tmp_path, concurrency=1), prompts[:1], candidate[:1],
                          baseline[:1], progress=False)
    assert results[0].outcome == "win" and len(chat_server.requests) == 3 + 2

    chat_server.requests.clear()
    chat_server.reply = lambda request, auth: (503, {"error": {"message": "down"}}, {})
    judge = make_openai_judge(chat_server, tmp_path, max_retries=2, cache_path=str(tmp_path / "fresh.jsonl"))
    results = judge_pairs(judge, prompts[:2], candidate[:2], baseline[:2], progress=False)
    assert [r.outcome for r in results] == ["error", "error"]
    assert len(chat_server.requests) == 2 * 2 * (1 + 2)  # two pairs, two orders, three attempts
    assert "gave up after 3 attempts" in results[0].rationale_candidate_as_a
    assert "HTTP 503" in results[0].rationale_candidate_as_a


def test_client_errors_and_refused_connections_are_errors(chat_server, tmp_path, monkeypatch):
    prompts, candidate, baseline, _ = constructed_set()
    monkeypatch.setenv(KEY_ENV, "sk-a-wrong-key")
    results = judge_pairs(make_openai_judge(chat_server, tmp_path), prompts[:1], candidate[:1], baseline[:1],
                          progress=False)
    assert results[0].outcome == "error" and "HTTP 401" in results[0].rationale_candidate_as_a
    assert len(chat_server.requests) == 2  # a refused key is not retried

    closed = SimpleNamespace(base_url="http://127.0.0.1:9/v1")  # the discard port: nothing listens
    results = judge_pairs(make_openai_judge(closed, tmp_path, max_retries=1), prompts[:1], candidate[:1],
                          baseline[:1], progress=False)
    assert results[0].outcome == "error" and "ConnectionError" in results[0].rationale_candidate_as_a


def test_missing_key_variable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeConfigError, match=KEY_ENV):
        OpenAIJudge("http://127.0.0.1:9/v1", "m", KEY_ENV, cache_path=str(tmp_path / "c.jsonl"))
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(JudgeConfigError, match=KEY_ENV):
        OpenAIJudge("http://127.0.0.1:9/v1", "m", KEY_ENV, cache_path=str(tmp_path / "c.jsonl"))


# --- the local judges ------------------------------------------------------------------------------

def test_gold_judge_counts_a_response_without_eos_as_wrong():
    judge = GoldJudge(is_correct, "arithmetic")
    assert judge.judge("12+30=", Response("42"), Response("41")).verdict == "A"
    assert judge.judge("12+30=", Response("41"), Response("42")).verdict == "B"
    cut_off = judge.judge("12+30=", Response("42", ended=False), Response("41"))
    assert cut_off.verdict == "tie" and "no EOS" in cut_off.rationale
    assert judge.judge("12+30=", Response("42"), Response("42")).verdict == "tie"


# --- end to end on a tiny random model --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random base model, the same weights saved as a Hydra directory with a reward head, and a
    prepared arithmetic directory with 20 held-out prompts."""
    root = tmp_path_factory.mktemp("eval-e2e")
    base = build_base_model(ModelInitConfig(output_dir=str(root / "base")))
    hydra = load_hydra(str(base), heads=("reward",)).save(root / "hydra")
    data = root / "data"
    prepare(DataConfig(format="arithmetic", output_dir=str(data), arithmetic_eval_prompts=20, max_records=20),
            progress=False)
    return SimpleNamespace(base=str(base), hydra=str(hydra), data=str(data))


def eval_config(tiny, out, **changes):
    return EvalConfig(**{**dict(candidate=tiny.hydra, baseline=tiny.hydra, prompts=tiny.data,
                                output_dir=str(out), max_prompts=20, max_new_tokens=4), **changes})


def assert_self_comparison(summary):
    assert summary["ties"] == 20 and summary["wins"] == summary["losses"] == summary["errors"] == 0
    assert summary["win_rate"] == 0.5
    assert summary["win_rate_low"] < 0.5 < summary["win_rate_high"]


@pytest.mark.parametrize("judge", ["gold", "reward-model"])
def test_model_against_itself_is_all_ties(tiny, tmp_path, judge):
    tracker = JsonlTracker(tmp_path / "tracking")
    summary = run_eval(eval_config(tiny, tmp_path / "out", judge=judge), tracker)
    assert_self_comparison(summary)
    assert summary["position_bias"] == 0.0
    assert summary["judge"]["name"] == judge
    assert summary["decoding"] == {"max_new_tokens": 4, "greedy": True, "temperature": 1.0, "top_k": 0,
                                   "top_p": 1.0, "seed": 0}
    assert summary["headline"].startswith(f"candidate vs baseline ({judge} judge): win-rate 0.50 [")
    assert summary["headline"].endswith("W/T/L/E 0/20/0/0, position bias 0.00")

    out = tmp_path / "out"
    assert json.loads((out / "eval_summary.json").read_text())["win_rate"] == 0.5
    rows = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    with (out / "judgments.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows) == 20
    assert rows[0]["candidate"] == rows[0]["baseline"] and rows[0]["verdict_candidate_as_a"] == "tie"
    assert (out / "winrate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "W/T/L/E 0/20/0/0" in page

    metrics = tracker.history[-1]
    assert metrics["eval/win_rate"] == 0.5 and metrics["eval/ties"] == 20 and metrics["eval/position_bias"] == 0
    assert json.loads((out / "eval_config.json").read_text())["judge"] == judge  # the config it ran with


def test_reward_judge_is_consistent_across_orders_on_different_answers(tiny):
    judge = RewardModelJudge(tiny.hydra)
    forward = judge.judge("12+30=", Response("42"), Response("7"))
    backward = judge.judge("12+30=", Response("7"), Response("42"))
    assert {forward.verdict, backward.verdict} == {"A", "B"}
    assert forward.rationale.startswith("reward A ")


def test_judges_that_cannot_work_fail_before_generating(tiny, tmp_path):
    with pytest.raises(JudgeConfigError, match="no trained reward head"):
        run_eval(eval_config(tiny, tmp_path, judge="reward-model", reward_model=tiny.base))
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text('{"prompt": "12+30="}\n{"prompt": "what is RLHF?", "reference": "a method"}\n')
    with pytest.raises(DataError, match="verifier"):
        run_eval(eval_config(tiny, tmp_path, judge="gold", prompts=str(prompts_file)))


def test_prompts_from_a_jsonl_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "12+30="}\n{"prompt": "what is RLHF?", "reference": "a method"}\n')
    prompts = load_prompts(str(path))
    assert [(p.prompt, p.reference) for p in prompts] == [("12+30=", ""), ("what is RLHF?", "a method")]
    assert len(load_prompts(str(path), max_prompts=1)) == 1
    path.write_text('{"prompt": ""}\n')
    with pytest.raises(DataError, match="prompt"):
        load_prompts(str(path))
    with pytest.raises(FileNotFoundError):
        load_prompts(str(tmp_path / "missing.jsonl"))


def test_openai_judge_end_to_end_with_cache_and_no_key_anywhere(tiny, tmp_path, chat_server):
    # The judge quotes the Authorization header back: a leak anywhere downstream would show.
    chat_server.reply = lambda request, auth: verdict_reply(f"Saw '{auth}'. The first is better.\n[[A]]")
    out, tracking = tmp_path / "out", tmp_path / "tracking"
    cfg = eval_config(tiny, out, judge="openai", judge_base_url=chat_server.base_url, judge_model="judge-model",
                      judge_api_key_env=KEY_ENV, judge_concurrency=2)
    summary = run_eval(cfg, JsonlTracker(tracking))
    assert_self_comparison(summary)
    assert summary["position_bias"] == 1.0  # always "A": every verdict flips with the order
    assert summary["judge"]["api_key_env"] == KEY_ENV and summary["judge"]["model"] == "judge-model"
    asked = len(chat_server.requests)
    assert asked > 0

    again = run_eval(cfg, JsonlTracker(tracking))
    assert len(chat_server.requests) == asked  # every judgment came from the cache
    assert again["ties"] == 20 and again["position_bias"] == 1.0

    written = [p for p in [*out.rglob("*"), *tracking.rglob("*")] if p.is_file()]
    assert {"judge_cache.jsonl", "judgments.jsonl", "judgments.csv", "eval_summary.json", "report.html",
            "winrate.png", "eval_config.json", "metrics.jsonl"} <= {p.name for p in written}
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    assert "Bearer ***" in (out / "judgments.jsonl").read_text()


def test_the_judge_cache_is_kept_per_endpoint_and_model(chat_server, tmp_path):
    def ask(judge):
        before = len(chat_server.requests)
        assert judge.judge("2+2=", Response("4"), Response("5")).verdict != "error"
        return len(chat_server.requests) - before

    assert ask(make_openai_judge(chat_server, tmp_path)) == 1
    assert ask(make_openai_judge(chat_server, tmp_path)) == 0  # the same endpoint, model and messages: cached
    elsewhere = chat_server.base_url.replace("127.0.0.1", "localhost")  # another server's name, the same model name
    assert ask(OpenAIJudge(elsewhere, "judge-model", KEY_ENV, cache_path=str(tmp_path / "cache.jsonl"))) == 1
    other_model = OpenAIJudge(chat_server.base_url, "judge-model-2", KEY_ENV, cache_path=str(tmp_path / "cache.jsonl"))
    assert ask(other_model) == 1
