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


def pair_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs where the chosen score is strictly higher (ties count half)."""
    return win_rate(chosen, rejected)


def finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError(f"non-finite metric {x}")
    return x


def bootstrap_ci(values: Sequence[float], *, stat=None, groups: Sequence | None = None, resamples: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat`` (default: the mean) over ``values``.

    ``groups``: resample whole groups (e.g. all samples of one prompt together), since samples of one prompt are
    not independent. Deterministic given ``seed``. Returns (low, high) at ``level``.
    """
    import random

    if not values:
        raise ValueError("bootstrap of an empty sample")
    stat = stat or (lambda xs: sum(xs) / len(xs))
    if groups is None:
        clusters = [[v] for v in values]
    else:
        by: dict = {}
        for g, v in zip(groups, values):
            by.setdefault(g, []).append(v)
        clusters = list(by.values())
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        pick = [clusters[rng.randrange(len(clusters))] for _ in clusters]
        stats.append(stat([v for c in pick for v in c]))
    return _percentile_interval(stats, level)


def _percentile_interval(stats: list[float], level: float) -> tuple[float, float]:
    """The (low, high) percentiles of bootstrap statistics that bound the central ``level`` share."""
    stats = sorted(stats)
    n, alpha = len(stats), (1 - level) / 2
    return float(stats[max(0, math.floor(alpha * n))]), float(stats[min(n - 1, math.ceil((1 - alpha) * n) - 1)])


def nested_bootstrap_ci(units: Sequence[Sequence[float]], *, resamples: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-unit means and its two-level percentile bootstrap interval: ``(estimate, low, high)``.

    For replicated experiments: ``units`` are independent replicates (e.g. training seeds), each a list of
    per-element values (e.g. per-prompt paired differences). A resample draws units with replacement, then
    elements with replacement within each drawn unit, so the interval carries both the seed-to-seed and the
    prompt-to-prompt variance; every unit weighs the same whatever its size. Deterministic given ``seed``.
    """
    import random

    if not units or any(not u for u in units):
        raise ValueError("nested bootstrap needs at least one unit and no empty unit")
    mean_ = lambda xs: sum(xs) / len(xs)  # noqa: E731
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        picked = [units[rng.randrange(len(units))] for _ in units]
        stats.append(mean_([mean_([u[rng.randrange(len(u))] for _ in u]) for u in picked]))
    lo, hi = _percentile_interval(stats, level)
    return float(mean_([mean_(u) for u in units])), lo, hi


def win_outcomes(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-comparison outcome of a vs b: 1 win, 0.5 tie, 0 loss (their mean is :func:`win_rate`)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"win_outcomes needs two equal, non-empty sequences (got {len(a)} and {len(b)})")
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]


def self_bleu(texts: Sequence[str], max_n: int = 2) -> float:
    """Mean over texts of BLEU-``max_n`` (uniform weights, no brevity penalty, +1 smoothing) of each text against
    all the others as references: 1 means every response repeats the others, lower is more diverse. Texts shorter
    than ``max_n`` words are skipped; fewer than two texts give 0."""
    from collections import Counter

    toks = [t.split() for t in texts]
    grams = [[Counter(tuple(w[i:i + n]) for i in range(len(w) - n + 1)) for n in range(1, max_n + 1)] for w in toks]
    scores = []
    for i, w in enumerate(toks):
        if len(w) < max_n or len(toks) < 2:
            continue
        log_p = 0.0
        for n in range(max_n):
            ref_max: Counter = Counter()
            for j, g in enumerate(grams):
                if j != i:
                    ref_max |= g[n]  # clip by the most any single reference has
            hyp = grams[i][n]
            clipped = sum(min(c, ref_max[g]) for g, c in hyp.items())
            log_p += math.log((clipped + 1) / (sum(hyp.values()) + 1)) / max_n
        scores.append(math.exp(log_p))
    return sum(scores) / len(scores) if scores else 0.0


def overoptimisation_gap(proxy: float, gold: float, proxy_base: float, gold_base: float) -> float:
    """Proxy gain minus gold gain over a baseline (SFT): how much of the reward model's improvement is not real."""
    return (proxy - proxy_base) - (gold - gold_base)
