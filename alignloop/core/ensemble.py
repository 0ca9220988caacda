"""Reward-model ensemble aggregation (pure): conservative rewards against over-optimisation.

Following "Reward Model Ensembles Help Mitigate Overoptimization" (Coste et al.): the mean of k reward models,
the worst case (min), or uncertainty-weighted mean - lam * std, where std is the population standard deviation
across members (the members are the whole ensemble, not a sample of one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def aggregate(member_rewards: Sequence[Sequence[float]], method: str, lam: float = 1.0) -> list[float]:
    """``member_rewards[k][i]`` is member k's reward for sample i; returns one reward per sample."""
    if not member_rewards:
        raise ValueError("an ensemble needs at least one member")
    n = len(member_rewards[0])
    if any(len(m) != n for m in member_rewards):
        raise ValueError(f"members scored different numbers of samples: {[len(m) for m in member_rewards]}")
    k = len(member_rewards)
    out = []
    for i in range(n):
        vals = [m[i] for m in member_rewards]
        mean = sum(vals) / k
        if method == "mean":
            out.append(mean)
        elif method == "min":
            out.append(min(vals))
        elif method == "mean_minus_std":
            out.append(mean - lam * math.sqrt(sum((v - mean) ** 2 for v in vals) / k))
        else:
            raise ValueError(f"unknown aggregation '{method}' (fix: one of mean, min, mean_minus_std)")
    return out
