"""Promotion gate, hand-computed."""

from alignloop.core.gate import gate_decision

CHAMP = {"proxy_reward": 2.0, "gold_reward": 0.5, "kl_to_sft": 1.0}


def test_beats_champion_on_every_metric_and_within_caps_promotes():
    ok, reasons = gate_decision({"proxy_reward": 2.5, "gold_reward": 0.6, "kl_to_sft": 3.0}, CHAMP,
                                beat=["proxy_reward", "gold_reward"], caps={"kl_to_sft": 5.0})
    assert ok
    assert reasons == ["pass proxy_reward: 2.5000 > champion 2.0000", "pass gold_reward: 0.6000 > champion 0.5000",
                       "pass kl_to_sft: 3.0000 <= cap 5.0"]


def test_tie_does_not_promote():
    ok, reasons = gate_decision({"proxy_reward": 2.0}, CHAMP, beat=["proxy_reward"])
    assert not ok and reasons == ["FAIL proxy_reward: 2.0000 <= champion 2.0000"]


def test_min_improvement_is_a_margin():
    assert not gate_decision({"proxy_reward": 2.05}, CHAMP, beat=["proxy_reward"], min_improvement=0.1)[0]
    ok, reasons = gate_decision({"proxy_reward": 2.15}, CHAMP, beat=["proxy_reward"], min_improvement=0.1)
    assert ok and reasons == ["pass proxy_reward: 2.1500 > champion 2.0000 + 0.1"]


def test_every_rule_is_reported_even_after_a_failure():
    ok, reasons = gate_decision({"proxy_reward": 1.0, "kl_to_sft": 9.0, "win_rate_vs_sft_proxy": 0.4}, CHAMP,
                                beat=["proxy_reward"], caps={"kl_to_sft": 5.0}, floors={"win_rate_vs_sft_proxy": 0.5})
    assert not ok
    assert reasons == ["FAIL proxy_reward: 1.0000 <= champion 2.0000", "FAIL kl_to_sft: 9.0000 > cap 5.0",
                       "FAIL win_rate_vs_sft_proxy: 0.4000 < floor 0.5"]


def test_cap_and_floor_are_inclusive():
    ok, _ = gate_decision({"kl_to_sft": 5.0, "distinct_2": 0.5}, {}, beat=[], caps={"kl_to_sft": 5.0},
                          floors={"distinct_2": 0.5})
    assert ok


def test_missing_metrics_fail_rather_than_pass():
    ok, reasons = gate_decision({"proxy_reward": 3.0}, {}, beat=["proxy_reward", "gold_reward"], caps={"kl_to_sft": 5})
    assert not ok
    assert reasons == ["FAIL proxy_reward: missing (champion has no proxy_reward)",
                       "FAIL gold_reward: missing (candidate has no gold_reward)", "FAIL kl_to_sft: missing (cap 5)"]


def test_no_rules_promotes():
    assert gate_decision({}, {}, beat=[]) == (True, [])


def test_lower_bound_needs_the_whole_interval_above_it():
    """A judge win-rate of 0.6 whose interval reaches down to 0.48 is not yet better than the champion."""
    rule = dict(beat=[], lower_bounds={"win_rate_vs_champion_judge": 0.5})
    ok, reasons = gate_decision({"win_rate_vs_champion_judge": 0.6}, {}, lows={"win_rate_vs_champion_judge": 0.48}, **rule)
    assert not ok and reasons == ["FAIL win_rate_vs_champion_judge: interval low 0.4800 <= 0.5"]
    ok, reasons = gate_decision({}, {}, lows={"win_rate_vs_champion_judge": 0.53}, **rule)
    assert ok and reasons == ["pass win_rate_vs_champion_judge: interval low 0.5300 > 0.5"]
    assert not gate_decision({}, {}, lows={"win_rate_vs_champion_judge": 0.5}, **rule)[0]  # strictly above
    ok, reasons = gate_decision({}, {}, lows={}, **rule)  # no interval: the rule cannot pass
    assert not ok and "no confidence interval" in reasons[0]
