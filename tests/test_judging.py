"""The LLM judge's arithmetic, by hand: verdict parsing, both orders, position bias, the length-controlled win-rate."""

from __future__ import annotations

import math

import pytest

from alignloop.core.judging import (DEFAULT_TEMPLATE, cache_key, first_position_rate, instruction_text,
                                    length_controlled_win_rate, order_agreement, pair_preference, parse_verdict,
                                    render, template_errors)


@pytest.mark.parametrize("answer, verdict", [
    ("1", 1), ("2", 2), (" 2.", 2), ("Response 1", 1), ("[[2]]", 2), ("output 2 is better", 2), ("2\n", 2),
    ("", None), (None, None), ("12", None), ("Neither", None), ("3", None), ("I pick 1", None),
])
def test_parse_verdict(answer, verdict):
    assert parse_verdict(answer) == verdict


@pytest.mark.parametrize("first, second, pref", [
    (1, 2, 1.0),   # candidate chosen in both orders
    (2, 1, 0.0),   # baseline chosen in both orders
    (1, 1, 0.5),   # the judge chose the first position both times: a tie, whatever it "meant"
    (2, 2, 0.5),
    (None, 2, 0.75), (None, None, 0.5), (2, None, 0.25),
])
def test_pair_preference_over_both_orders(first, second, pref):
    assert pair_preference(first, second) == pref


def test_position_bias_and_order_agreement():
    assert first_position_rate([1, 1, 1, 2, None]) == 0.75
    # candidate-first verdicts [1, 1, 2], candidate-second [2, 1, 1]: pairs 1 and 3 agree (1->2 and 2->1)
    assert order_agreement([1, 1, 2, None], [2, 1, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        first_position_rate([None])


def test_length_controlled_win_rate_equals_the_raw_rate_without_length_differences():
    assert length_controlled_win_rate([1, 1, 1, 0], [5] * 4, [5] * 4, l2=0) == pytest.approx(0.75, abs=1e-9)
    assert length_controlled_win_rate([1, 0.5, 0], [3, 3, 3], [3, 3, 3], l2=0) == pytest.approx(0.5, abs=1e-9)


def test_length_controlled_win_rate_discounts_a_length_advantage():
    # Candidate longer by 3 on 6 pairs, winning 5; shorter by 3 on 2, winning 1. Raw: 6/8. The two-parameter fit is
    # saturated: sigmoid(theta + phi a) = 5/6 and sigmoid(theta - phi a) = 1/2, so theta = (logit 5/6 + 0) / 2 = ln(5)/2
    # and the length-controlled rate is 1 / (1 + 5^-1/2).
    prefs = [1, 1, 1, 1, 1, 0, 1, 0]
    cand = [13] * 6 + [7] * 2
    base = [10] * 8
    assert sum(prefs) / len(prefs) == 0.75
    lc = length_controlled_win_rate(prefs, cand, base, l2=0)
    assert lc == pytest.approx(1 / (1 + 5 ** -0.5), abs=1e-6)
    # The penalty only shrinks towards 0.5; a judge that always prefers one side still gets a finite fit.
    assert 0.5 < length_controlled_win_rate(prefs, cand, base) <= lc + 1e-9
    assert 0.9 < length_controlled_win_rate([1] * 5, [4] * 5, [4] * 5) < 1
    assert math.isfinite(length_controlled_win_rate([1, 1, 0, 0], [9, 9, 1, 1], [5] * 4))


def test_render_fills_each_placeholder_once_and_leaves_braces_alone():
    text = render(DEFAULT_TEMPLATE, "say {hi}", "a {response_2} b", "c")
    assert "## Instruction\nsay {hi}\n\n## Response 1\na {response_2} b\n\n## Response 2\nc\n\n" in text
    assert template_errors(DEFAULT_TEMPLATE) == []
    assert template_errors("{instruction} {response_1}") == ["the template must contain {response_2} exactly once (it has 0)"]
    assert instruction_text([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]) == "user: hi\nassistant: yo"


def test_cache_key_changes_with_every_part_and_with_the_order():
    key = cache_key("m", "t", "i", "a", "b")
    assert key == cache_key("m", "t", "i", "a", "b")
    assert len({key, cache_key("m2", "t", "i", "a", "b"), cache_key("m", "t2", "i", "a", "b"),
                cache_key("m", "t", "i2", "a", "b"), cache_key("m", "t", "i", "b", "a")}) == 5
