"""An LLM judge behind any OpenAI-compatible chat-completions endpoint, MT-Bench style.

The judge explains, then ends with [[A]], [[B]] or [[C]] (tie). Anything that does not give a
verdict, and any call that still fails after the retries, is an "error" judgment for that order:
never a crash, never a silent win. The API key is read from the environment and kept out of every
judgment, message and setting this judge produces.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from email.utils import parsedate_to_datetime

import requests

from hydra_core.data.chat import as_text
from hydra_core.data.schema import Prompt
from hydra_core.eval.cache import JudgmentCache, judgment_key
from hydra_core.eval.judges import Judgment, JudgeConfigError, Response

SYSTEM_PROMPT = (
    "You are an impartial judge comparing two AI assistants' answers to the same user question. "
    "Decide which answer serves the user better: judge correctness first, then helpfulness, "
    "relevance, depth and clarity. If a reference answer is given, check both answers against it. "
    "The order in which the answers appear must not influence you, nor their length, nor the "
    "assistants' names. First explain your comparison briefly. Then give your verdict on the last "
    "line, exactly in this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is "
    "better, \"[[C]]\" for a tie."
)
VERDICT_TAG = re.compile(r"\[\[([ABC])\]\]")
TAG_TO_VERDICT = {"A": "A", "B": "B", "C": "tie"}
DECODING = {"temperature": 0}  # sent with every request, and part of every cached judgment's key
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
MAX_BACKOFF_S = 60.0


def user_message(prompt: Prompt, a: str, b: str, reference: str = "") -> str:
    """The judge's question: the prompt as text (a conversation as its transcript), the answers after it."""
    parts = [f"[User Question]\n{as_text(prompt)}\n"]
    if reference:
        parts.append(f"[Reference Answer]\n{reference}\n")
    parts.append(f"[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n")
    parts.append(f"[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]")
    return "\n".join(parts)


def parse_verdict(text: str) -> str:
    """The last verdict tag (the judge explains first, and may quote the tags while doing so)."""
    tags = VERDICT_TAG.findall(text)
    return TAG_TO_VERDICT[tags[-1]] if tags else "error"


class JudgeCallError(Exception):
    """The endpoint gave no usable reply."""


class OpenAIJudge:
    name = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str, *, cache_path: str,
                 concurrency: int = 4, timeout: float = 60.0, max_retries: int = 5,
                 retry_base_delay: float = 1.0):
        key = os.environ.get(api_key_env, "")
        if not key:
            raise JudgeConfigError(
                f"the openai judge reads its API key from the environment variable {api_key_env}, "
                "which is not set (or empty); set it, or choose the variable with --judge-api-key-env"
            )
        self._key = key
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.cache = JudgmentCache(cache_path)

    def settings(self) -> dict:
        return {"name": self.name, "base_url": self.base_url, "model": self.model,
                "api_key_env": self.api_key_env, "concurrency": self.concurrency,
                "timeout": self.timeout, "max_retries": self.max_retries,
                "cache": str(self.cache.path), "system_prompt": SYSTEM_PROMPT}

    def judge(self, prompt: Prompt, a: Response, b: Response, reference: str = "") -> Judgment:
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": user_message(prompt, a.text, b.text, reference)}]
        # What decides the judgment is the key: the endpoint (another server may serve another model
        # under the same name), the model, the decoding and the exact messages (question, reference,
        # both answers, template), so a changed template or server never reuses an old verdict.
        key = judgment_key(self.base_url.rstrip("/"), self.model, json.dumps(DECODING, sort_keys=True),
                           messages[0]["content"], messages[1]["content"])
        cached = self.cache.get(key)
        if cached is not None:
            return Judgment(cached["verdict"], cached["rationale"])
        try:
            text = self._redact(self._complete(messages))
        except JudgeCallError as e:
            return Judgment("error", self._redact(str(e)))
        verdict = parse_verdict(text)
        if verdict == "error":
            return Judgment("error", f"no [[A]]/[[B]]/[[C]] verdict in the judge's reply: {text[:500]}")
        # Only verdicts are kept: a failed call or an unreadable reply is asked again next run.
        self.cache.put(key, model=self.model, verdict=verdict, rationale=text)
        return Judgment(verdict, text)

    def _complete(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, **DECODING}
        headers = {"Authorization": f"Bearer {self._key}"}
        problem = ""
        for attempt in range(self.max_retries + 1):
            wait = None
            try:
                reply = requests.post(self.url, json=body, headers=headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as e:
                problem = f"{type(e).__name__}: {e}"
            except requests.RequestException as e:
                raise JudgeCallError(f"request failed: {type(e).__name__}: {e}") from None
            else:
                if reply.ok:
                    return _content(reply)
                problem = f"HTTP {reply.status_code}: {reply.text[:300]}"
                if reply.status_code not in RETRYABLE_STATUS:
                    raise JudgeCallError(problem)
                wait = _retry_after(reply)
            if attempt < self.max_retries:
                time.sleep(wait if wait is not None else self._backoff(attempt))
        raise JudgeCallError(f"gave up after {self.max_retries + 1} attempts; last: {problem}")

    def _backoff(self, attempt: int) -> float:
        # Jitter spreads the retries of concurrent workers that were refused at the same moment.
        return min(MAX_BACKOFF_S, self.retry_base_delay * 2 ** attempt) * random.uniform(0.5, 1.0)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***")


def _content(reply: requests.Response) -> str:
    try:
        content = reply.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeCallError(f"not a chat-completions reply: {reply.text[:300]}") from None
    if not isinstance(content, str):
        raise JudgeCallError(f"the reply has no text content: {reply.text[:300]}")
    return content


def _retry_after(reply: requests.Response) -> float | None:
    """The server's Retry-After, in seconds or as an HTTP date, when it sent one we can read."""
    value = reply.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
