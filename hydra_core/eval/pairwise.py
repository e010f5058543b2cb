"""Both orders of every pair, and what they add up to.

Each pair is judged with the candidate as A, then as B. Consistent verdicts are a win or a loss (or
a tie); verdicts that disagree with the order are a tie, as in MT-Bench, and count towards the
position-bias rate. An error in either order makes the pair an error: it is reported, and left out
of the win-rate's denominator.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm.auto import tqdm

from hydra_core.data.chat import as_text
from hydra_core.data.schema import EvalPrompt
from hydra_core.eval.judges import Judge, Response

# The candidate's outcome read from one verdict, by the position the candidate was shown in.
AS_A = {"A": "win", "B": "loss", "tie": "tie"}
AS_B = {"A": "loss", "B": "win", "tie": "tie"}
OUTCOMES = ("win", "tie", "loss", "error")


def combine(candidate_as_a: str, candidate_as_b: str) -> tuple[str, bool | None]:
    """The candidate's outcome from the two verdicts, and whether they agreed (None: an error)."""
    if "error" in (candidate_as_a, candidate_as_b):
        return "error", None
    first, second = AS_A[candidate_as_a], AS_B[candidate_as_b]
    return (first, True) if first == second else ("tie", False)


@dataclass
class PairResult:
    prompt: str  # as a person reads it: a conversation as its transcript
    reference: str
    candidate: str
    baseline: str
    candidate_ended: bool
    baseline_ended: bool
    verdict_candidate_as_a: str
    verdict_candidate_as_b: str
    outcome: str  # the candidate's: win, tie, loss or error
    consistent: bool | None
    rationale_candidate_as_a: str
    rationale_candidate_as_b: str


def judge_pairs(judge: Judge, prompts: list[EvalPrompt], candidate: list[Response],
                baseline: list[Response], progress: bool = True) -> list[PairResult]:
    jobs = []
    for p, c, b in zip(prompts, candidate, baseline, strict=True):
        jobs += [(p.prompt, c, b, p.reference), (p.prompt, b, c, p.reference)]

    with ThreadPoolExecutor(max_workers=judge.concurrency) as pool:
        judgments = list(tqdm(pool.map(lambda job: judge.judge(*job), jobs), total=len(jobs),
                              desc=f"judging ({judge.name})",
                              disable=not progress))
    results = []
    for i, (p, c, b) in enumerate(zip(prompts, candidate, baseline)):
        as_a, as_b = judgments[2 * i], judgments[2 * i + 1]
        outcome, consistent = combine(as_a.verdict, as_b.verdict)
        results.append(PairResult(as_text(p.prompt), p.reference, c.text, b.text, c.ended, b.ended,
                                  as_a.verdict, as_b.verdict, outcome, consistent,
                                  as_a.rationale, as_b.rationale))
    return results


def tally(results: list[PairResult]) -> dict:
    """Counts of each outcome and the position-bias rate among the pairs judged without error."""
    counts = {o: sum(r.outcome == o for r in results) for o in OUTCOMES}
    judged = len(results) - counts["error"]
    flipped = sum(r.consistent is False for r in results)
    return {
        "pairs": len(results),
        "wins": counts["win"],
        "ties": counts["tie"],
        "losses": counts["loss"],
        "errors": counts["error"],
        "judged": judged,
        "inconsistent": flipped,
        "position_bias": flipped / judged if judged else None,
    }
