"""Selection strategies over scored samples (pure functions): which responses become preference pairs, RAFT
fine-tuning targets, or listwise rankings.

A candidate is ``(sample, reward)`` with the samples contract's fields (``response``, ``num_tokens``). Empty
responses never take part (a pair needs text on both sides). Ties are broken by sample order, so every
strategy is deterministic given its inputs (and the ``rng`` where it takes one).
"""

from __future__ import annotations

import math
import random

from alignloop.core.pairs import max_min_pair

Candidate = tuple[dict, float]
Pair = tuple[dict, dict, float, float]


def _usable(candidates: list[Candidate]) -> list[Candidate]:
    return [c for c in candidates if c[0]["response"].strip()]


def max_random_pair(candidates: list[Candidate], min_margin: float, rng: random.Random) -> Pair | None:
    """Best response vs one drawn uniformly from those at least ``min_margin`` below it with a different text."""
    cands = _usable(candidates)
    if len(cands) < 2:
        return None
    best = max(range(len(cands)), key=lambda i: (cands[i][1], -i))
    c, rc = cands[best]
    pool = [j for j, (s, r) in enumerate(cands)
            if j != best and rc - r > 0 and rc - r >= min_margin and s["response"].strip() != c["response"].strip()]
    if not pool:
        return None
    s, r = cands[rng.choice(pool)]
    return c, s, rc, r


def length_penalised_pair(candidates: list[Candidate], lam: float, min_margin: float) -> Pair | None:
    """Max-min on ``reward - lam * num_tokens`` (against length exploitation); scores returned are the penalised
    ones, which are what the margin was judged on."""
    adjusted = [(s, r - lam * s["num_tokens"]) for s, r in candidates]
    return max_min_pair(adjusted, min_margin)


def raft_top_k(groups: dict, k: int) -> list[Candidate]:
    """RAFT, per prompt: the ``k`` highest-reward responses of each prompt (prompt-id order, best first)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out: list[Candidate] = []
    for pid in sorted(groups):
        cands = _usable(groups[pid])
        order = sorted(range(len(cands)), key=lambda i: (-cands[i][1], i))
        out += [cands[i] for i in order[:k]]
    return out


def raft_top_fraction(groups: dict, fraction: float) -> list[Candidate]:
    """RAFT, global: the top ``ceil(fraction * N)`` of all N usable responses by reward (ties: prompt-id, sample order)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    pool = [(pid, i, c) for pid in sorted(groups) for i, c in enumerate(_usable(groups[pid]))]
    pool.sort(key=lambda t: -t[2][1])  # stable: equal rewards keep prompt-id and sample order
    return [c for _, _, c in pool[: math.ceil(fraction * len(pool))]]


def ranked(candidates: list[Candidate]) -> list[dict]:
    """All usable responses best first, each with its rank; equal rewards share a rank (1, 2, 2, 4)."""
    cands = _usable(candidates)
    order = sorted(range(len(cands)), key=lambda i: (-cands[i][1], i))
    out, rank = [], 0
    for pos, i in enumerate(order):
        if pos == 0 or cands[i][1] != cands[order[pos - 1]][1]:
            rank = pos + 1
        out.append({"sample": cands[i][0], "reward": cands[i][1], "rank": rank})
    return out


# --- General-preference self-play (SPPO, DNO, INPO): a preference model's pairwise probabilities, not rewards ----


def symmetrise(raw: list[list[float]]) -> list[list[float]]:
    """A preference model's ordered-pair probabilities made consistent: ``P[i][j] = (raw[i][j] + 1 - raw[j][i]) / 2``.

    ``raw[i][j]`` is the model's P(i ≻ j) with i shown first; order-sensitive models (PairRM, LLM judges) give
    ``raw[i][j] + raw[j][i] != 1``. Averaging both orders gives ``P[i][j] + P[j][i] == 1`` exactly; the diagonal
    (ignored in ``raw``) is 0.5.
    """
    n = len(raw)
    if any(len(row) != n for row in raw):
        raise ValueError(f"raw preference matrix must be square, got {n} rows of lengths {[len(r) for r in raw]}")
    return [[0.5 if i == j else (raw[i][j] + 1 - raw[j][i]) / 2 for j in range(n)] for i in range(n)]


def win_rates(p: list[list[float]]) -> list[float]:
    """Each response's win-rate against the rest of its group: mean over ``j != i`` of ``p[i][j]``.

    SPPO's P̂(y ≻ π_t | x), with the group's other responses as the samples of π_t; ``p`` is normally
    :func:`symmetrise`'s output (its diagonal is ignored).
    """
    n = len(p)
    if n < 2:
        raise ValueError(f"win rates need at least 2 responses per prompt to compare, got {n}")
    if any(len(row) != n for row in p):
        raise ValueError(f"preference matrix must be square, got {n} rows of lengths {[len(r) for r in p]}")
    return [sum(p[i][j] for j in range(n) if j != i) / (n - 1) for i in range(n)]


def winrate_pair(win: list[float], min_margin: float, usable: list[bool] | None = None) -> tuple[int, int] | None:
    """``(best, worst)`` indices by win-rate among the usable responses (all when ``usable`` is None): SPPO's
    chosen/rejected and DNO's pair with its margin filter.

    Ties go to the first index (for both best and worst). None when fewer than two are usable, or the gap
    ``win[best] - win[worst]`` is below ``min_margin`` or not positive (equal win-rates carry no preference).
    """
    if usable is None:
        usable = [True] * len(win)
    if len(usable) != len(win):
        raise ValueError(f"usable has {len(usable)} flags for {len(win)} win-rates")
    idx = [i for i, u in enumerate(usable) if u]
    if len(idx) < 2:
        return None
    best = max(idx, key=lambda i: (win[i], -i))
    worst = min(idx, key=lambda i: (win[i], i))
    margin = win[best] - win[worst]
    if best == worst or margin <= 0 or margin < min_margin:
        return None
    return best, worst
