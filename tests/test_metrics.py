"""Evaluation metrics on small hand-computed inputs."""

from __future__ import annotations

import math

import pytest

from alignloop.core.metrics import distinct_n, finite, mean, pair_accuracy, win_rate


def test_mean():
    assert mean([1.0, 2.0, 4.0]) == pytest.approx(7 / 3)
    assert mean([-1.5]) == -1.5
    with pytest.raises(ValueError, match="empty"):
        mean([])


def test_win_rate_ties_count_half():
    # a vs b: 3>1 win, 1=1 tie (0.5), 2<4 loss, 5>0 win -> (1 + 0.5 + 0 + 1) / 4 = 0.625
    assert win_rate([3, 1, 2, 5], [1, 1, 4, 0]) == pytest.approx(0.625)
    assert win_rate([1, 1], [1, 1]) == 0.5  # all ties
    assert win_rate([2, 3], [0, 0]) == 1.0
    assert win_rate([0, 0], [2, 3]) == 0.0


def test_win_rate_is_antisymmetric():
    a, b = [0.1, 0.5, 0.9, 0.3], [0.2, 0.5, 0.1, 0.3]
    assert win_rate(a, b) + win_rate(b, a) == pytest.approx(1.0)


def test_win_rate_rejects_unequal_or_empty():
    with pytest.raises(ValueError, match="3 and 2"):
        win_rate([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        win_rate([], [])


def test_distinct_1():
    # tokens: a b a b | a c -> 6 unigrams, distinct {a, b, c} = 3 -> 0.5
    assert distinct_n(["a b a b", "a c"], 1) == pytest.approx(0.5)


def test_distinct_2_counts_across_texts():
    # "a b a b" -> (a b) (b a) (a b); "a c" -> (a c): 4 bigrams, distinct 3 -> 0.75
    assert distinct_n(["a b a b", "a c"], 2) == pytest.approx(0.75)
    # the same bigram in two texts counts once: (x y) (x y) -> 1/2
    assert distinct_n(["x y", "x y"], 2) == pytest.approx(0.5)
    # n-grams never span two texts: "a" + "b" has no bigram (a b)
    assert distinct_n(["a", "b"], 2) == 0.0


def test_distinct_n_texts_shorter_than_n():
    # "a" has no bigram; "b c" has one -> 1/1
    assert distinct_n(["a", "b c"], 2) == 1.0
    assert distinct_n(["a b"], 3) == 0.0
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["", "   "], 1) == 0.0


def test_distinct_3():
    # x y z x y z -> (x y z) (y z x) (z x y) (x y z): 4 trigrams, 3 distinct -> 0.75
    assert distinct_n(["x y z x y z"], 3) == pytest.approx(0.75)


def test_pair_accuracy():
    # 2>1 yes, 1=1 half, 0.5<0.7 no, 3>-1 yes, 4>0 yes -> 3.5 / 5 = 0.7
    assert pair_accuracy([2, 1, 0.5, 3, 4], [1, 1, 0.7, -1, 0]) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        pair_accuracy([1.0], [])


def test_finite():
    assert finite(1.5) == 1.5
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            finite(bad)


# --- issue 7: intervals, diversity, over-optimisation ------------------------------------------------------------


def test_bootstrap_ci_of_a_constant_is_that_constant():
    from alignloop.core.metrics import bootstrap_ci

    assert bootstrap_ci([0.7] * 10, resamples=200) == (pytest.approx(0.7), pytest.approx(0.7))


def test_bootstrap_ci_of_two_points_spans_both():
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5 % and 97.5 % quantiles of
    # 2000 draws are 0 and 1 (P(no draw of mean 0 in 2000) = 0.75^2000)
    from alignloop.core.metrics import bootstrap_ci

    assert bootstrap_ci([0.0, 1.0], resamples=2000, seed=3) == (0.0, 1.0)


def test_bootstrap_ci_matches_the_normal_interval_on_a_known_sample():
    # 400 values alternating 0 and 1: mean 0.5, sd 0.5, normal 95 % half-width 1.96 * 0.5 / 20 = 0.049
    from alignloop.core.metrics import bootstrap_ci

    lo, hi = bootstrap_ci([float(i % 2) for i in range(400)], resamples=4000, seed=1)
    assert lo == pytest.approx(0.451, abs=0.01) and hi == pytest.approx(0.549, abs=0.01)
    assert bootstrap_ci([float(i % 2) for i in range(400)], resamples=500, seed=1) == \
        bootstrap_ci([float(i % 2) for i in range(400)], resamples=500, seed=1)  # deterministic given the seed


def test_bootstrap_ci_by_groups_resamples_whole_groups():
    # two groups, each constant: group a = [0, 0], group b = [1, 1]; any resample is (a,a), (a,b), (b,a) or (b,b)
    # -> means 0, 0.5, 0.5, 1, never 0.25 (which item-level resampling would give)
    from alignloop.core.metrics import bootstrap_ci

    seen = {bootstrap_ci([0, 0, 1, 1], groups=["a", "a", "b", "b"], resamples=1, seed=s)[0] for s in range(40)}
    assert seen <= {0.0, 0.5, 1.0} and len(seen) == 3


def test_nested_bootstrap_estimate_weighs_every_unit_the_same():
    # unit means 1 and 4 (sizes 3 and 1): estimate (1 + 4) / 2 = 2.5, not the pooled (1+1+1+4)/4 = 1.75
    from alignloop.core.metrics import nested_bootstrap_ci

    est, lo, hi = nested_bootstrap_ci([[1.0, 1.0, 1.0], [4.0]], resamples=2000, seed=0)
    assert est == 2.5
    # units are constant inside, so a resample's mean is (1,1) -> 1, (1,4)/(4,1) -> 2.5, (4,4) -> 4 with probabilities
    # 1/4, 1/2, 1/4: the 2.5 % and 97.5 % quantiles of 2000 draws are 1 and 4
    assert (lo, hi) == (1.0, 4.0)


def test_nested_bootstrap_carries_the_within_unit_variance():
    # one unit: the outer draw is always it, so the interval is the inner (prompt) bootstrap of [0, 1]: 0 .. 1;
    # identical units with no spread inside give a zero-width interval.
    from alignloop.core.metrics import nested_bootstrap_ci

    assert nested_bootstrap_ci([[0.0, 1.0]], resamples=2000, seed=3) == (0.5, 0.0, 1.0)
    assert nested_bootstrap_ci([[0.2, 0.2], [0.2]], resamples=300) == (pytest.approx(0.2), pytest.approx(0.2),
                                                                         pytest.approx(0.2))
    with pytest.raises(ValueError, match="no empty unit"):
        nested_bootstrap_ci([[1.0], []])


def test_win_outcomes_with_ties():
    from alignloop.core.metrics import win_outcomes

    assert win_outcomes([3, 1, 2], [1, 1, 4]) == [1.0, 0.5, 0.0]


def test_self_bleu_hand_computed():
    # "a b" vs the other "a b": unigram 2/2, bigram 1/1 -> smoothed (3/3, 2/2) -> 1.0 for both identical texts
    from alignloop.core.metrics import self_bleu

    assert self_bleu(["a b", "a b"]) == pytest.approx(1.0)
    # "a b" vs "c d": unigrams 0/2 -> 1/3, bigrams 0/1 -> 1/2: sqrt(1/3 * 1/2) = 0.408248 for each
    assert self_bleu(["a b", "c d"]) == pytest.approx(math.sqrt(1 / 6))
    # "a b c" vs "a b d": unigrams 2/3 -> 3/4, bigrams 1/2 -> 2/3: sqrt(1/2) = 0.707107 for each
    assert self_bleu(["a b c", "a b d"]) == pytest.approx(math.sqrt(0.5))
    assert self_bleu(["only one"]) == 0.0 and self_bleu(["a", "b"]) == 0.0  # too few texts / too short


def test_overoptimisation_gap():
    # proxy rose 1.5 (0.5 -> 2.0) while gold rose 0.25 (0.1 -> 0.35): 1.25 of the proxy gain is not real
    from alignloop.core.metrics import overoptimisation_gap

    assert overoptimisation_gap(2.0, 0.35, 0.5, 0.1) == pytest.approx(1.25)
