"""Per-prompt sample budgets (pure): spend samples where a pair is likely to be informative.

The Knapsack-RL idea for rejection sampling: a prompt whose responses all got the same reward last round
(always solved, always failed) yields no usable pair whatever n is, while a prompt with high reward variance
yields pairs with wide margins. With a total budget B, every prompt gets ``min_n`` samples and the rest is
shared in proportion to last round's per-prompt reward variance (largest-remainder rounding, ties to the earlier
prompt), capped at ``max_n``; with no variance anywhere it is shared evenly.
"""

from __future__ import annotations

from collections.abc import Sequence


def reward_variance(rewards: Sequence[float]) -> float:
    """Population variance of one prompt's rewards (0 for fewer than two)."""
    if len(rewards) < 2:
        return 0.0
    m = sum(rewards) / len(rewards)
    return sum((r - m) ** 2 for r in rewards) / len(rewards)


def _share(extra: int, weights: list[float], room: list[int]) -> list[int]:
    """Split ``extra`` over prompts by ``weights`` without exceeding ``room``; largest remainders, earlier first."""
    alloc = [0] * len(weights)
    while extra > 0:
        open_ = [i for i, r in enumerate(room) if alloc[i] < r]
        if not open_:
            break
        w = {i: weights[i] for i in open_}
        if sum(w.values()) <= 0:
            w = {i: 1.0 for i in open_}  # nothing to prefer: evenly
        total_w = sum(w.values())
        ideal = {i: extra * w[i] / total_w for i in open_}
        give = {i: min(int(ideal[i]), room[i] - alloc[i]) for i in open_}
        left = extra - sum(give.values())
        for i in sorted(open_, key=lambda i: (-(ideal[i] - int(ideal[i])), i)):
            if left == 0:
                break
            if give[i] < room[i] - alloc[i]:
                give[i] += 1
                left -= 1
        if sum(give.values()) == 0:
            break
        for i, g in give.items():
            alloc[i] += g
        extra -= sum(give.values())
    return alloc


def allocate(variances: Sequence[float], total: int, *, min_n: int = 2, max_n: int | None = None) -> list[int]:
    """Samples per prompt: ``min_n`` each, the remaining ``total - P*min_n`` by variance, at most ``max_n`` each.

    Raises ValueError when ``total`` cannot give every prompt ``min_n``. The result sums to ``total`` unless every
    prompt reached ``max_n`` first.
    """
    p = len(variances)
    if any(v < 0 for v in variances):
        raise ValueError("variances must be >= 0")
    if max_n is not None and max_n < min_n:
        raise ValueError(f"max_n ({max_n}) < min_n ({min_n})")
    if total < p * min_n:
        raise ValueError(f"budget {total} cannot give {p} prompts {min_n} samples each (fix: raise the budget to "
                         f">= {p * min_n} or lower min_n)")
    room = [(max_n - min_n) if max_n is not None else total for _ in range(p)]
    extra = _share(total - p * min_n, list(variances), room)
    return [min_n + e for e in extra]


# Expected range (max - min) of n standard normal draws, n = 1..10 (the d2 constants of quality control).
EXPECTED_RANGE = [0.0, 0.0, 1.128, 1.693, 2.059, 2.326, 2.534, 2.704, 2.847, 2.970, 3.078]


def allocate_expected_range(stds: Sequence[float], total: int, *, min_n: int = 2, max_n: int = 8) -> list[int]:
    """Samples per prompt that maximise the summed expected best-minus-worst margin, if a prompt's rewards are
    normal with last round's std: greedily give the next sample to the prompt whose expected range grows most,
    ``std * (d[n+1] - d[n])`` (ties to the earlier prompt). Diminishing returns spread the budget instead of
    piling it on the noisiest prompts."""
    if max_n >= len(EXPECTED_RANGE) or min_n < 1 or max_n < min_n:
        raise ValueError(f"need 1 <= min_n <= max_n <= {len(EXPECTED_RANGE) - 1}, got {min_n}, {max_n}")
    p = len(stds)
    if total < p * min_n:
        raise ValueError(f"budget {total} cannot give {p} prompts {min_n} samples each (fix: raise the budget to "
                         f">= {p * min_n} or lower min_n)")
    import heapq

    alloc = [min_n] * p
    gain = lambda i: stds[i] * (EXPECTED_RANGE[alloc[i] + 1] - EXPECTED_RANGE[alloc[i]])  # noqa: E731
    heap = [(-gain(i), i) for i in range(p) if alloc[i] < max_n]
    heapq.heapify(heap)
    left = total - p * min_n
    while left > 0 and heap:
        _, i = heapq.heappop(heap)
        alloc[i] += 1
        left -= 1
        if alloc[i] < max_n:
            heapq.heappush(heap, (-gain(i), i))
    return alloc


def next_wave(rewards: Sequence[Sequence[float]], remaining: int, *, target_margin: float, max_n: int,
              step: int = 1) -> list[int]:
    """Adaptive budget, one wave: how many more samples each prompt gets, given the rewards it has so far.

    A prompt is open while its best-minus-worst reward is below ``target_margin`` and it has fewer than ``max_n``
    samples; each open prompt gets ``step`` more (capped at ``max_n``). When ``remaining`` cannot cover every open
    prompt, the ones closest to a usable pair go first — fewer than two samples, then largest current margin, ties
    to the earlier prompt — so prompts whose samples all score alike (always solved, always failed) are the ones left out. Returns zeros
    when nothing is open or nothing remains.
    """
    if step < 1 or max_n < 1:
        raise ValueError(f"step and max_n must be >= 1, got {step}, {max_n}")
    want = [0] * len(rewards)
    margin = [max(r) - min(r) if r else 0.0 for r in rewards]
    open_ = [i for i, r in enumerate(rewards) if len(r) < max_n and (len(r) < 2 or margin[i] < target_margin)]
    open_.sort(key=lambda i: (len(rewards[i]) >= 2, -margin[i], i))  # a prompt without a pair yet comes first
    left = remaining
    for i in open_:
        if left <= 0:
            break
        want[i] = min(step, max_n - len(rewards[i]), left)
        left -= want[i]
    return want
