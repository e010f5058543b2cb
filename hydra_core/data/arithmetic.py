"""The embedded default task, "arithmetic assistant": two-digit addition with a gold verifier.

Nothing can be downloaded in a sealed environment, so the default task is generated here, and it
is one where alignment can be measured by an independent judge: the verifier below.

Why the data looks like this: demonstrations come from a sloppy annotator whose errors are
concentrated (it forgets the carry on most carry problems), so SFT learns the majority error while
sampling still finds the right answer often enough for RL to amplify it. Preference pairs are
labelled by the gold rule and cover every error type the policy can produce, so the reward head
is not exploitable by PPO.
"""

from __future__ import annotations

import random
import re

from hydra_core.config.settings import DataConfig
from hydra_core.data.schema import Demonstration, EvalPrompt, PreferencePair

FORGET_CARRY_RATE = 0.7  # on problems whose units digits carry
SLIP_RATE = 0.05  # small slips on every other problem
REJECTED_KINDS = ("forgot-carry", "near-miss", "random", "reversed")

_ANSWER = re.compile(r"^\s*(-?\d+)\s*$")


def make_prompt(a: int, b: int) -> str:
    return f"{a}+{b}="


def parse_prompt(prompt: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\+(\d+)=\s*", prompt)
    if not m:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    return int(m.group(1)), int(m.group(2))


def is_correct(prompt: str, response: str) -> bool:
    """Gold verifier: the response is exactly the right integer (EOS is stripped by the caller)."""
    a, b = parse_prompt(prompt)
    m = _ANSWER.match(response)
    return bool(m) and int(m.group(1)) == a + b


def has_carry(a: int, b: int) -> bool:
    return a % 10 + b % 10 >= 10


def _near_miss(rng: random.Random, correct: int) -> int:
    return correct + rng.choice((-1, 1, -2, 2, -10, 10, -11, 11, 1 - 10, 10 - 1))


def wrong_answer(rng: random.Random, a: int, b: int, kind: str) -> int:
    """A wrong sum of the given kind; falls back to a near miss where the kind does not apply."""
    correct = a + b
    if kind == "forgot-carry" and has_carry(a, b):
        candidate = correct - 10
    elif kind == "random":
        candidate = rng.randint(10, 198)
    elif kind == "reversed":
        candidate = int(str(correct)[::-1])
    else:
        candidate = _near_miss(rng, correct)
    while candidate == correct or candidate < 0:
        candidate = _near_miss(rng, correct)
    return candidate


def annotate(rng: random.Random, a: int, b: int) -> int:
    """What the sloppy annotator writes for a + b."""
    correct = a + b
    if has_carry(a, b) and rng.random() < FORGET_CARRY_RATE:
        return correct - 10
    if rng.random() < SLIP_RATE:
        return correct + rng.choice((-1, 1))
    return correct


def build_task(cfg: DataConfig) -> dict:
    rng = random.Random(cfg.seed)
    problems = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(problems)
    if cfg.max_records:
        problems = problems[: cfg.max_records + cfg.arithmetic_eval_prompts]
    held_out, train = problems[: cfg.arithmetic_eval_prompts], problems[cfg.arithmetic_eval_prompts:]
    if not held_out or not train:
        raise ValueError(
            f"arithmetic task: {len(problems)} problems cannot give both splits "
            f"(arithmetic_eval_prompts={cfg.arithmetic_eval_prompts}, max_records={cfg.max_records})"
        )

    def split(items: list[tuple[int, int]], name: str) -> dict:
        demos, pairs, prompts = [], [], []
        for i, (a, b) in enumerate(items):
            prompt, source = make_prompt(a, b), f"arithmetic[{name}]:problem {i}"
            demos.append(Demonstration(prompt, str(annotate(rng, a, b)), source))
            prompts.append(EvalPrompt(prompt, str(a + b), source))
            kinds = rng.sample(REJECTED_KINDS, k=min(cfg.arithmetic_pairs_per_prompt, len(REJECTED_KINDS)))
            for kind in kinds:
                pairs.append(PreferencePair(prompt, str(a + b), str(wrong_answer(rng, a, b, kind)), source))
        return {f"demos_{name}": demos, f"pairs_{name}": pairs, f"prompts_{name}": prompts}

    out = {**split(train, "train"), **split(held_out, "eval")}
    wrong = sum(not is_correct(d.prompt, d.response) for d in out["demos_train"])
    out["task_info"] = {
        "task": "arithmetic",
        "verifier": "hydra_core.data.arithmetic:is_correct",
        "demonstration_error_rate": round(wrong / len(out["demos_train"]), 4),
        "forget_carry_rate": FORGET_CARRY_RATE,
        "slip_rate": SLIP_RATE,
        "rejected_kinds": list(REJECTED_KINDS),
    }
    return out
