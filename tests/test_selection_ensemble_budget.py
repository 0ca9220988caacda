"""Hand-computed tests: selection strategies, reward-ensemble aggregation, per-prompt sample budgets."""

from __future__ import annotations

import math
import random

import pytest

from alignloop.core.budget import allocate, reward_variance, next_wave
from alignloop.core.ensemble import aggregate
from alignloop.core.selection import length_penalised_pair, max_random_pair, raft_top_fraction, raft_top_k, ranked


def s(text: str, tokens: int) -> dict:
    return {"response": text, "num_tokens": tokens, "prompt": "p"}


A, B, EMPTY, C, D = s("a", 3), s("b", 5), s("", 0), s("c", 2), s("d", 4)
CANDS = [(A, 1.0), (B, 3.0), (EMPTY, 9.0), (C, 3.0), (D, -1.0)]  # the empty one has the top reward: ignored


def test_max_random_picks_the_best_and_a_lower_one_at_random():
    seen = set()
    for seed in range(20):
        c, r, rc, rr = max_random_pair(CANDS, 0.5, random.Random(seed))
        assert c is B and rc == 3.0          # best; B before C on the tie
        assert r in (A, D)                   # C ties the best (margin 0): never the rejected
        seen.add(r["response"])
    assert seen == {"a", "d"}


def test_max_random_margin_and_degenerate_inputs():
    assert max_random_pair(CANDS, 3.0, random.Random(0))[1] is D          # only d is >= 3 below
    assert max_random_pair(CANDS, 5.0, random.Random(0)) is None
    assert max_random_pair([(A, 1.0)], 0.0, random.Random(0)) is None      # n = 1
    assert max_random_pair([(A, 1.0), (B, 1.0)], 0.0, random.Random(0)) is None   # equal rewards
    assert max_random_pair([(A, 2.0), (EMPTY, 1.0)], 0.0, random.Random(0)) is None


def test_length_penalised_max_min():
    # reward - 0.5 * tokens: a -0.5, b 0.5, c 2.0, d -3.0
    c, r, rc, rr = length_penalised_pair(CANDS, 0.5, 0.1)
    assert (c, r, rc, rr) == (C, D, 2.0, -3.0)
    assert length_penalised_pair(CANDS, 0.0, 0.1)[:2] == (B, D)           # lam 0 is plain max-min
    assert length_penalised_pair(CANDS, 0.5, 5.1) is None                 # margin 5.0 < 5.1


def test_raft_top_k_per_prompt():
    groups = {"p2": CANDS, "p1": [(s("x", 1), 0.0)]}
    assert [c[0]["response"] for c in raft_top_k(groups, 2)] == ["x", "b", "c"]
    assert [c[0]["response"] for c in raft_top_k(groups, 10)] == ["x", "b", "c", "a", "d"]
    with pytest.raises(ValueError):
        raft_top_k(groups, 0)


def test_raft_top_fraction_global():
    groups = {"p2": CANDS, "p1": [(s("x", 1), 0.0)]}
    # 5 usable responses, ceil(0.5 * 5) = 3: b and c (tie, sample order), then a
    assert [c[0]["response"] for c in raft_top_fraction(groups, 0.5)] == ["b", "c", "a"]
    assert len(raft_top_fraction(groups, 1.0)) == 5
    with pytest.raises(ValueError):
        raft_top_fraction(groups, 0.0)


def test_ranked_listwise_with_shared_ranks():
    out = ranked(CANDS)
    assert [(o["sample"]["response"], o["rank"]) for o in out] == [("b", 1), ("c", 1), ("a", 3), ("d", 4)]
    assert ranked([]) == []


def test_ensemble_aggregations():
    members = [[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]]
    assert aggregate(members, "mean") == [2.0, 3.0]
    assert aggregate(members, "min") == [1.0, 2.0]
    # sample 0: std of (1, 3, 2) = sqrt(2/3); sample 1: std of (2, 2, 5) = sqrt(2)
    got = aggregate(members, "mean_minus_std", lam=1.0)
    assert got == pytest.approx([2 - math.sqrt(2 / 3), 3 - math.sqrt(2)])
    assert aggregate(members, "mean_minus_std", lam=0.5)[0] == pytest.approx(2 - 0.5 * math.sqrt(2 / 3))
    assert aggregate([[4.0, -1.0]], "mean_minus_std") == [4.0, -1.0]      # one member: no spread
    with pytest.raises(ValueError, match="different numbers"):
        aggregate([[1.0], [1.0, 2.0]], "mean")
    with pytest.raises(ValueError, match="fix: one of"):
        aggregate(members, "median")


def test_reward_variance():
    assert reward_variance([1.0, 3.0]) == 1.0
    assert reward_variance([2.0, 2.0, 2.0]) == 0.0
    assert reward_variance([5.0]) == 0.0


def test_allocate_proportional_to_variance():
    assert allocate([0.0, 1.0, 3.0], 10, min_n=2) == [2, 3, 5]          # 4 extra split 0:1:3


def test_allocate_ties_go_to_earlier_prompts():
    assert allocate([1.0, 1.0, 1.0], 10, min_n=2) == [4, 3, 3]           # 4/3 each, the odd one to prompt 0


def test_allocate_without_variance_is_even():
    assert allocate([0.0, 0.0], 7, min_n=2) == [4, 3]


def test_allocate_caps_and_spills_over():
    # extra 6, variance only on prompts 1 and 2, but max_n=4 leaves room for 2 each: the rest goes to prompt 0
    assert allocate([0.0, 5.0, 5.0], 12, min_n=2, max_n=4) == [4, 4, 4]
    assert allocate([1.0, 1.0], 100, min_n=1, max_n=3) == [3, 3]         # all capped: less than the budget


def test_allocate_edge_cases():
    assert allocate([3.0], 1, min_n=1) == [1]                             # n = 1
    assert allocate([], 0) == []
    with pytest.raises(ValueError, match="cannot give 2 prompts 2 samples"):
        allocate([1.0, 2.0], 3, min_n=2)
    with pytest.raises(ValueError, match="max_n"):
        allocate([1.0], 5, min_n=3, max_n=2)
    assert sum(allocate([0.3, 0.1, 0.0, 2.2, 0.9], 40, min_n=2)) == 40


def test_allocate_expected_range_greedy_hand_computed():
    from alignloop.core.budget import allocate_expected_range

    # gains from n=2: std * (1.693 - 1.128) = 0.565 std; from n=3: 0.366 std; from n=4: 0.267 std
    # stds (1, 2): extra 3 -> prompt 1 (1.13), prompt 1 (0.732), prompt 0 (0.565 > 0.534)
    assert allocate_expected_range([1.0, 2.0], 7, min_n=2, max_n=8) == [3, 4]
    assert allocate_expected_range([1.0, 1.0], 6, min_n=2, max_n=8) == [3, 3]     # tie: earlier first, then the other
    assert allocate_expected_range([0.0, 0.0, 5.0], 8, min_n=2, max_n=4) == [2, 2, 4]  # capped; zero-std gain is 0
    assert sum(allocate_expected_range([0.0, 0.0, 5.0], 9, min_n=2, max_n=4)) == 9
    with pytest.raises(ValueError):
        allocate_expected_range([1.0], 5, min_n=2, max_n=11)


# --- adaptive budget: next_wave ------------------------------------------------------------------------


def test_next_wave_gives_step_to_every_open_prompt_when_budget_allows():
    # margins 0.5 (open), 2.0 (done), 0.0 (open), one sample (open: no pair yet)
    rewards = [[0.0, 0.5], [1.0, 3.0], [0.0, 0.0], [0.2]]
    assert next_wave(rewards, 10, target_margin=1.0, max_n=4, step=2) == [2, 0, 2, 2]


def test_next_wave_short_budget_goes_to_prompts_closest_to_a_pair():
    rewards = [[0.0, 0.5], [1.0, 3.0], [0.0, 0.0], [0.2]]
    # order: the one-sample prompt (3), then margin 0.5 (0), then margin 0.0 (2); 3 samples: 2 + 1 + 0
    assert next_wave(rewards, 3, target_margin=1.0, max_n=4, step=2) == [1, 0, 0, 2]


def test_next_wave_caps_at_max_n_and_stops_when_done_or_spent():
    assert next_wave([[0.0, 0.1, 0.2]], 10, target_margin=1.0, max_n=4, step=3) == [1]
    assert next_wave([[0.0, 0.1, 0.2, 0.3]], 10, target_margin=1.0, max_n=4) == [0]   # at max_n
    assert next_wave([[0.0, 2.0], [0.0, 0.0]], 0, target_margin=1.0, max_n=8) == [0, 0]  # nothing left
    assert next_wave([[0.0, 2.0], [5.0, 1.0]], 9, target_margin=1.0, max_n=8) == [0, 0]  # all usable
    assert next_wave([], 5, target_margin=1.0, max_n=8) == []


def test_next_wave_ties_go_to_the_earlier_prompt():
    assert next_wave([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]], 2, target_margin=0.5, max_n=8) == [1, 1, 0]


def test_next_wave_margin_exactly_at_target_is_done():
    assert next_wave([[0.0, 1.0], [0.0, 0.999]], 5, target_margin=1.0, max_n=8) == [0, 1]


def test_next_wave_rejects_bad_step():
    with pytest.raises(ValueError):
        next_wave([[0.0]], 5, target_margin=1.0, max_n=8, step=0)
