"""The judge protocol and the two local judges (the task's gold verifier and a reward head).

A judge sees one prompt and two responses, A and B, and says which is better. It does not know
which response is the candidate's: `pairwise` shows it both orders and reads the two verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Protocol

from hydra_core.data.schema import Prompt
from hydra_core.data.tasks import Verifier

Verdict = Literal["A", "B", "tie", "error"]
REWARD_TIE_EPSILON = 1e-4  # closer rewards are a tie: the same text padded differently differs in float32 noise


class JudgeConfigError(ValueError):
    """A judge cannot be set up as configured (missing key variable, no verifier, no reward head)."""


@dataclass(frozen=True)
class Response:
    text: str
    ended: bool = True  # finished with EOS within the token cap; a cut-off answer may look right


@dataclass(frozen=True)
class Judgment:
    verdict: Verdict
    rationale: str = ""


class Judge(Protocol):
    name: str
    concurrency: int  # how many judgments may run at once

    def judge(self, prompt: Prompt, a: Response, b: Response, reference: str = "") -> Judgment: ...

    def settings(self) -> dict:
        """What identifies this judge in a report; never a secret."""
        ...


class GoldJudge:
    """The task's own verifier: a correct response beats a wrong one, otherwise a tie."""

    name = "gold"
    concurrency = 1

    def __init__(self, verifier: Verifier, task: str):
        self.verifier = verifier
        self.task = task

    def _correct(self, prompt: str, response: Response) -> bool:
        return response.ended and self.verifier(prompt, response.text)

    def judge(self, prompt: str, a: Response, b: Response, reference: str = "") -> Judgment:
        ok_a, ok_b = self._correct(prompt, a), self._correct(prompt, b)
        verdict = "tie" if ok_a == ok_b else ("A" if ok_a else "B")
        return Judgment(verdict, f"A {_grade(ok_a, a)}, B {_grade(ok_b, b)}")

    def settings(self) -> dict:
        return {"name": self.name, "task": self.task}


def _grade(correct: bool, response: Response) -> str:
    if correct:
        return "correct"
    return "wrong" if response.ended else "wrong (no EOS)"


class RewardModelJudge:
    """A reward head scores both responses; the higher reward wins."""

    name = "reward-model"
    concurrency = 1  # one model on one device: threads would only contend for it

    def __init__(self, path: str, *, trust_remote_code: bool = False, chat_template: str = ""):
        # The one judge that needs torch and transformers, imported here: steps that only read judgments
        # (register, compare) import this module without them.
        from hydra_core.models.hydra import require_reward_head

        try:
            require_reward_head(path, "the reward-model judge (--reward-model)")
        except ValueError as e:
            raise JudgeConfigError(str(e)) from None
        self.path = path
        self.trust_remote_code = trust_remote_code
        self.chat_template = chat_template

    @cached_property
    def model(self):
        # Loaded on first use, so the policies that generate before judging never share memory with it.
        from hydra_core.models.hydra import load_hydra
        from hydra_core.runtime import pick_device

        model = load_hydra(self.path, heads=("reward",), device=pick_device(),
                           trust_remote_code=self.trust_remote_code, chat_template=self.chat_template)
        return model.eval()

    def judge(self, prompt: Prompt, a: Response, b: Response, reference: str = "") -> Judgment:
        from hydra_core.models.hydra import reward_scores

        reward_a, reward_b = reward_scores(self.model, [(prompt, a.text), (prompt, b.text)])
        if abs(reward_a - reward_b) <= REWARD_TIE_EPSILON:
            verdict = "tie"
        else:
            verdict = "A" if reward_a > reward_b else "B"
        return Judgment(verdict, f"reward A {reward_a:.4f}, B {reward_b:.4f}")

    def settings(self) -> dict:
        return {"name": self.name, "reward_model": self.path, "tie_epsilon": REWARD_TIE_EPSILON}
