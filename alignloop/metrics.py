"""Evaluation metrics (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("mean of an empty sequence")
    return float(sum(xs) / len(xs))


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Share of paired comparisons a[i] vs b[i] that a wins; ties count half."""
    if len(a) != len(b) or not a:
        raise ValueError(f"win_rate needs two equal, non-empty sequences (got {len(a)} and {len(b)})")
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams across ``texts`` (whitespace tokens); 0 when there are none."""
    total, seen = 0, set()
    for t in texts:
        words = t.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def kl_estimate(logp_policy: Sequence[float], logp_ref: Sequence[float]) -> float:
    """Monte-Carlo KL(policy || ref) per sequence from samples of the policy: mean of log pi - log ref (k1)."""
    if len(logp_policy) != len(logp_ref) or not logp_policy:
        raise ValueError("kl_estimate needs two equal, non-empty sequences")
    return mean([p - r for p, r in zip(logp_policy, logp_ref)])


def pair_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs where the chosen score is strictly higher (ties count half)."""
    return win_rate(chosen, rejected)


def finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError(f"non-finite metric {x}")
    return x
