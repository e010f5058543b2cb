"""Win-rate with a confidence interval.

The interval is the Wilson score interval: unlike the normal approximation it stays inside [0, 1]
and behaves at win-rates near 0 or 1 and at small n. Ties count as half a win in the point estimate
and in the interval, which is then computed on the fractional success count (the usual convention
for pairwise LLM judging).
"""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for `successes` out of `n`; (0, 1) when there is nothing to judge by."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(wins: int, ties: int, losses: int, confidence: float = 0.95) -> dict:
    """Win-rate (ties count half) and its interval; the rate is None when nothing was judged."""
    n = wins + ties + losses
    low, high = wilson_interval(wins + ties / 2, n, confidence)
    return {
        "win_rate": (wins + ties / 2) / n if n else None,
        "win_rate_low": low,
        "win_rate_high": high,
        "confidence": confidence,
        "interval": "wilson",
    }
