"""Evaluation metrics on small hand-computed inputs."""

from __future__ import annotations

import math

import pytest

from alignloop.metrics import distinct_n, finite, kl_estimate, mean, pair_accuracy, win_rate


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


def test_kl_estimate():
    # log pi - log ref: 0.5, 0.0, 1.0 -> mean 0.5
    assert kl_estimate([-1.0, -2.0, -0.5], [-1.5, -2.0, -1.5]) == pytest.approx(0.5)
    # identical -> 0; the k1 estimate can be negative on a single sample
    assert kl_estimate([-3.0, -4.0], [-3.0, -4.0]) == 0.0
    assert kl_estimate([-2.0], [-1.0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        kl_estimate([-1.0, -2.0], [-1.0])
    with pytest.raises(ValueError):
        kl_estimate([], [])


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
