"""The embedded synthetic task: gold reward on hand-built replies, prompts, corpus, simulated annotator.

gold = 2 * on-topic share of content words (words not in FILLER)
       + 0.5 * min(#positive, 2) - 0.5 * #negative
       - 2 * (1 - #distinct words / #words)
       - 0.25 * (words below 6 + words above 12)
Every expected value below is worked out by hand in the comment next to it.

The intransitive variant (task.intransitive = w > 0): three response styles marked by their own words, and the
annotators' true preference P_gold(a > b) = sigmoid((gold(a) - gold(b)) / T + w * C(style a, style b)) with
rock > scissors > paper > rock (C = +1 / -1 / 0).
"""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from alignloop.core.synthetic import (
    BEATS,
    FILLER,
    LENGTH_WINDOW,
    NEGATIVE,
    POSITIVE,
    SFT_STYLE_MIX,
    STYLES,
    STYLES_RPS,
    TEMPLATES,
    TOPICS,
    add_style,
    annotate,
    gold_preference,
    gold_reward,
    make_corpus,
    make_prompts,
    rps,
    sigmoid,
    style_of,
    topic_of,
)

OCEAN = "tell me about ocean"


def test_constants_the_hand_computations_rely_on():
    assert LENGTH_WINDOW == (6, 12)
    assert {"the", "a", "is", "and", "with"} <= set(FILLER)
    assert {"lovely", "great", "bright", "calm"} <= set(POSITIVE)
    assert {"awful", "dull", "sad", "bad"} <= set(NEGATIVE)
    assert TOPICS["ocean"] == ["waves", "tide", "salt", "shore", "blue", "deep", "coral", "sail"]


# --- gold_reward ------------------------------------------------------------------------------------


def test_gold_perfect_reply():
    # 6 words, all ocean words: on-topic 6/6 -> 2*1 = 2.0; no pos/neg, no repeats, inside the window.
    assert gold_reward(OCEAN, "waves tide salt shore blue deep") == pytest.approx(2.0)


def test_gold_on_topic_share_ignores_filler():
    # words: waves tide stars moon the and (6). content (minus filler 'the','and') = 4, on-topic 2
    # -> 2 * 2/4 = 1.0; no repeats, length 6 -> 1.0
    assert gold_reward(OCEAN, "waves tide stars moon the and") == pytest.approx(1.0)


def test_gold_topic_name_itself_counts_and_case_is_ignored():
    # 'OCEAN Waves TIDE salt shore blue' -> all 6 on topic ('ocean' is the topic word) -> 2.0
    assert gold_reward("Tell me about OCEAN", "OCEAN Waves TIDE salt shore blue") == pytest.approx(2.0)


def test_gold_positive_words_capped_at_two():
    # waves lovely great bright calm tide (6): content 6, on-topic 2 -> 2*2/6 = 0.6667
    # positive 4 -> capped at 2 -> +1.0 ; total 1.6667
    assert gold_reward(OCEAN, "waves lovely great bright calm tide") == pytest.approx(2 / 3 + 1.0)
    # one positive word only: waves lovely tide shore salt deep -> on-topic 5/6 -> 1.6667 + 0.5 = 2.1667
    assert gold_reward(OCEAN, "waves lovely tide shore salt deep") == pytest.approx(10 / 6 + 0.5)


def test_gold_negative_penalty_is_not_capped():
    # waves awful dull sad tide shore (6): on-topic 3/6 -> 1.0 ; negative 3 -> -1.5 ; total -0.5
    assert gold_reward(OCEAN, "waves awful dull sad tide shore") == pytest.approx(-0.5)


def test_gold_repetition_share():
    # waves waves waves tide tide shore: 6 words, 3 distinct -> repeated 1 - 3/6 = 0.5 -> -1.0
    # all on topic -> +2.0 ; total 1.0
    assert gold_reward(OCEAN, "waves waves waves tide tide shore") == pytest.approx(1.0)


def test_gold_length_window_below():
    # 'waves tide': 2 words, 4 below the window -> -0.25*4 = -1.0 ; on-topic 2.0 ; total 1.0
    assert gold_reward(OCEAN, "waves tide") == pytest.approx(1.0)
    # 5 words: 1 below -> 2.0 - 0.25 = 1.75
    assert gold_reward(OCEAN, "waves tide salt shore blue") == pytest.approx(1.75)


def test_gold_length_window_above_and_edges():
    twelve = "waves tide salt shore blue deep coral sail ocean the a is"
    # 12 words (upper edge): content = 9 topic words, on-topic 1 -> 2.0, no penalty
    assert gold_reward(OCEAN, twelve) == pytest.approx(2.0)
    # 14 words: + 'and with' (filler) -> 2 above the window -> 2.0 - 0.5 = 1.5
    assert gold_reward(OCEAN, twelve + " and with") == pytest.approx(1.5)
    # 13 words -> 1 above -> 1.75
    assert gold_reward(OCEAN, twelve + " and") == pytest.approx(1.75)


def test_gold_empty_response():
    assert gold_reward(OCEAN, "") == -4.0
    assert gold_reward(OCEAN, "   \n\t ") == -4.0


def test_gold_only_filler_has_zero_on_topic():
    # 6 filler words: no content -> on-topic 0 ; nothing else -> 0.0
    assert gold_reward(OCEAN, "the a is and with of") == pytest.approx(0.0)


def test_gold_prompt_without_topic():
    # no topic in the prompt -> nothing is on topic. 7 words, 1 positive -> 0 + 0.5 = 0.5
    assert topic_of("tell me something nice") is None
    assert gold_reward("tell me something nice", "waves tide salt shore blue deep lovely") == pytest.approx(0.5)


def test_gold_all_terms_together():
    # prompt topic: coffee. words (9): the coffee aroma is lovely lovely and stars bad
    # content (minus the/is/and) = coffee aroma lovely lovely stars bad (6), on-topic 2 -> 2*2/6 = 12/18
    # positive 2 -> +1.0 = 18/18 ; negative 1 -> -0.5 = -9/18
    # distinct 8 of 9 -> repeated 1/9 -> -2/9 = -4/18 ; length 9 inside -> 0
    # total = (12 + 18 - 9 - 4) / 18 = 17/18
    prompt = "please describe coffee in a few words"
    assert gold_reward(prompt, "the coffee aroma is lovely lovely and stars bad") == pytest.approx(17 / 18)


def test_gold_prefers_better_reply():
    good = "waves tide salt shore lovely deep coral"
    bad = "stars stars awful dull"
    assert gold_reward(OCEAN, good) > gold_reward(OCEAN, bad)


# --- topic_of / make_prompts ------------------------------------------------------------------------


def test_topic_of():
    assert topic_of("tell me about ocean") == "ocean"
    assert topic_of("Kindly TALK ABOUT Space") == "space"
    assert topic_of("compare space and ocean") == "ocean"  # the last topic word wins
    assert topic_of("garden city") == "city"
    assert topic_of("hello there") is None
    assert topic_of("") is None


def test_make_prompts_distinct_and_deterministic():
    total = len(TOPICS) * len(TEMPLATES) * len(STYLES)  # 10 * 8 * 6 = 480
    assert total == 480
    prompts = make_prompts(total, random.Random(0))
    assert len(prompts) == 480 == len(set(prompts))
    assert all(topic_of(p) in TOPICS for p in prompts)
    assert make_prompts(50, random.Random(3)) == make_prompts(50, random.Random(3))
    assert make_prompts(50, random.Random(3)) != make_prompts(50, random.Random(4))
    assert len(make_prompts(1000, random.Random(0))) == 480  # capped at all combinations
    assert make_prompts(0, random.Random(0)) == []


# --- corpus -----------------------------------------------------------------------------------------

SMALL = dict(num_prompts=20, sft_per_prompt=3, pairs_per_prompt=2, annotator_temperature=0.5, good_demo_fraction=0.35)


def test_make_corpus_deterministic_per_seed():
    a = make_corpus(**SMALL, seed=0)
    b = make_corpus(**SMALL, seed=0)
    c = make_corpus(**SMALL, seed=1)
    assert a == b
    assert a != c
    assert a["sft"] != c["sft"]


def test_make_corpus_shape():
    corpus = make_corpus(**SMALL, seed=0)
    assert set(corpus) == {"prompts", "sft", "prefs"}
    assert len(corpus["prompts"]) == 20
    assert len(corpus["sft"]) == 20 * 3
    assert len(corpus["prefs"]) <= 20 * 2  # identical a/b are skipped
    assert corpus["prompts"][0]["id"] == "p00000"
    assert corpus["sft"][0]["id"] == "p00000-s0"
    for row in corpus["prompts"]:
        assert row["meta"]["topic"] == topic_of(row["prompt"])
    ids = [r["id"] for r in corpus["prompts"] + corpus["sft"] + corpus["prefs"]]
    assert len(ids) == len(set(ids))
    for pair in corpus["prefs"]:
        assert pair["chosen"] != pair["rejected"]
        assert pair["source"] == "annotator"


def test_sft_demos_have_mixed_quality():
    corpus = make_corpus(num_prompts=40, sft_per_prompt=4, pairs_per_prompt=0, annotator_temperature=0.5,
                         good_demo_fraction=0.35, seed=0)
    gold = [gold_reward(r["prompt"], r["response"]) for r in corpus["sft"]]
    assert min(gold) < 0 < 1.5 < max(gold)
    assert sum(g < 0 for g in gold) >= 10  # a real share of bad demos, not one outlier
    assert sum(g > 1.5 for g in gold) >= 10
    assert statistics.pstdev(gold) > 0.8


def test_good_demo_fraction_raises_demo_quality():
    kw = dict(num_prompts=30, sft_per_prompt=4, pairs_per_prompt=0, annotator_temperature=0.5, seed=0)
    careful = make_corpus(**kw, good_demo_fraction=1.0)["sft"]
    careless = make_corpus(**kw, good_demo_fraction=0.0)["sft"]
    mean = lambda rows: statistics.fmean(gold_reward(r["prompt"], r["response"]) for r in rows)  # noqa: E731
    assert mean(careful) > mean(careless) + 0.5


# --- annotator --------------------------------------------------------------------------------------

BETTER = "waves tide salt shore blue deep"  # gold 2.0
WORSE = "waves tide"  # gold 1.0 (on topic 2.0, four words below the window -1.0)


def _share_better(temperature: float, draws: int, seed: int = 0) -> float:
    rng = random.Random(seed)
    wins = 0
    for i in range(draws):
        a, b = (BETTER, WORSE) if i % 2 == 0 else (WORSE, BETTER)  # both argument orders
        chosen, rejected, gc, gr = annotate(OCEAN, a, b, rng, temperature)
        assert {chosen, rejected} == {BETTER, WORSE}
        assert gc == gold_reward(OCEAN, chosen) and gr == gold_reward(OCEAN, rejected)
        wins += chosen == BETTER
    return wins / draws


def test_annotator_low_temperature_prefers_higher_gold():
    # gold gap 1.0, T = 0.1 -> P(better) = sigmoid(10) = 0.99995
    assert _share_better(0.1, 2000) >= 0.99


def test_annotator_unit_temperature_is_bradley_terry():
    # gold gap 1.0, T = 1 -> P(better) = sigmoid(1) = 0.7311; 4000 draws -> std 0.007
    assert _share_better(1.0, 4000) == pytest.approx(0.7311, abs=0.035)


def test_annotator_very_high_temperature_is_a_coin_flip():
    # gold gap 1.0, T = 1000 -> P(better) = sigmoid(0.001) = 0.50025; 4000 draws -> std 0.0079
    assert _share_better(1000.0, 4000) == pytest.approx(0.5, abs=0.05)


def test_annotator_returns_consistent_golds():
    chosen, rejected, gc, gr = annotate(OCEAN, BETTER, WORSE, random.Random(0), 0.01)
    assert (chosen, rejected) == (BETTER, WORSE)
    assert (gc, gr) == pytest.approx((2.0, 1.0))


# --- intransitive variant: styles, rock-paper-scissors, P_gold --------------------------------------

STYLE_WORDS = {w for ws in STYLES_RPS.values() for w in ws}


def test_style_words_are_in_no_other_list():
    others = set(FILLER) | set(POSITIVE) | set(NEGATIVE) | set(TOPICS) | {w for ws in TOPICS.values() for w in ws}
    others |= set(" ".join(TEMPLATES + STYLES).split())
    assert set(STYLES_RPS) == {"rock", "paper", "scissors"}
    assert not STYLE_WORDS & others
    assert sum(len(ws) for ws in STYLES_RPS.values()) == len(STYLE_WORDS)  # no word marks two styles
    assert BEATS == {"rock": "scissors", "scissors": "paper", "paper": "rock"}


def test_style_of():
    rock, paper, scissors = (STYLES_RPS[s][0] for s in ("rock", "paper", "scissors"))
    assert style_of("waves tide salt shore") is None  # no marker
    assert style_of("") is None
    assert style_of(f"waves {rock} tide") == "rock"
    assert style_of(f"waves {paper.upper()} tide") == "paper"  # case is ignored
    assert style_of(f"{scissors} waves {rock} {scissors}") == "scissors"  # 2 scissors vs 1 rock
    assert style_of(f"{rock} waves {paper}") is None  # 1 vs 1: tied
    assert style_of(f"{rock} {STYLES_RPS['rock'][1]} {paper} {paper}") is None  # 2 vs 2: tied


def test_rps():
    assert rps("rock", "scissors") == rps("scissors", "paper") == rps("paper", "rock") == 1
    assert rps("scissors", "rock") == rps("paper", "scissors") == rps("rock", "paper") == -1
    assert rps("rock", "rock") == rps("paper", None) == rps(None, "rock") == rps(None, None) == 0


def test_add_style_inserts_one_or_two_markers_of_its_style():
    base = "waves tide salt shore blue deep"
    counts = set()
    rng = random.Random(0)
    for _ in range(200):
        for style in STYLES_RPS:
            styled = add_style(base, style, rng)
            markers = [w for w in styled.split() if w in STYLE_WORDS]
            assert set(markers) <= set(STYLES_RPS[style]) and len(set(markers)) == len(markers)
            assert [w for w in styled.split() if w not in STYLE_WORDS] == base.split()  # the reply is kept, in order
            assert style_of(styled) == style
            counts.add(len(markers))
    assert counts == {1, 2}
    assert add_style(base, "rock", random.Random(5)) == add_style(base, "rock", random.Random(5))


def test_style_words_are_neutral_for_gold():
    # 'waves tide salt shore blue deep' = 2.0 (all on topic, 6 words). A marker is not content, so the on-topic
    # share stays 6/6; 7 or 8 words stay inside the window and repeat nothing -> still 2.0.
    assert gold_reward(OCEAN, "waves tide salt firm shore blue deep") == pytest.approx(2.0)
    assert gold_reward(OCEAN, "soft waves tide salt shore blue deep airy") == pytest.approx(2.0)
    # like filler: 'waves tide stars moon sharp crisp' -> content 4, on-topic 2 -> 1.0 (as with 'the and')
    assert gold_reward(OCEAN, "waves tide stars moon sharp crisp") == gold_reward(OCEAN, "waves tide stars moon the and")
    # only markers: no content -> 0.0, like only filler
    assert gold_reward(OCEAN, "solid firm steady soft light airy") == pytest.approx(0.0)


def test_sigmoid_is_the_logistic_function_and_never_overflows():
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1.0) == pytest.approx(0.7310585786)
    assert sigmoid(-1.0) == pytest.approx(1 - 0.7310585786)
    assert sigmoid(-800.0) == 0.0  # e^-800 underflows; 1 / (1 + e^800) would raise OverflowError
    assert sigmoid(800.0) == 1.0
    assert 0.0 < sigmoid(-720.0) < 1e-300  # e^-720, where 1 + e^720 would overflow


# equal gold (2.0 each, as in test_style_words_are_neutral_for_gold): only the style term is left
ROCK = "waves tide salt firm shore blue deep"
PAPER = "waves tide salt soft shore blue deep"
SCISSORS = "waves tide salt sharp shore blue deep"


def test_gold_preference_without_intransitivity_is_bradley_terry():
    # BETTER 2.0 vs WORSE 1.0, T = 0.5 -> sigmoid(2) = 0.8808; styles are ignored at w = 0
    assert gold_preference(OCEAN, BETTER, WORSE, 0.5) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert gold_preference(OCEAN, BETTER, WORSE, 0.5, 0.0) == 1.0 / (1.0 + math.exp(-(2.0 - 1.0) / 0.5))
    assert gold_preference(OCEAN, ROCK, PAPER, 0.5, 0.0) == 0.5


def test_gold_preference_is_a_cycle():
    # equal gold, w = 1: P(winner > loser) = sigmoid(1) = 0.7311 all around rock > scissors > paper > rock
    for a, b in ((ROCK, SCISSORS), (SCISSORS, PAPER), (PAPER, ROCK)):
        assert gold_preference(OCEAN, a, b, 0.5, 1.0) == pytest.approx(0.7310585786)
    assert gold_preference(OCEAN, ROCK, ROCK, 0.5, 1.0) == 0.5
    assert gold_preference(OCEAN, ROCK, "waves tide salt shore blue deep", 0.5, 1.0) == 0.5  # no style: no term
    # gold and style add up in the logit: BETTER (2.0, no style) vs a paper reply of gold 1.0
    # 'waves soft tide' -> on-topic 2/2, 3 words below the window -0.75 -> 1.25; logit (2.0 - 1.25)/0.5 = 1.5, no style
    assert gold_preference(OCEAN, BETTER, "waves soft tide", 0.5, 2.0) == pytest.approx(1 / (1 + math.exp(-1.5)))
    # rock 'waves firm tide' (1.25) vs scissors 'waves sharp tide salt' (4 words: 2.0 - 0.5 = 1.5):
    # logit (1.25 - 1.5)/0.5 + 2 * (+1) = -0.5 + 2 = 1.5
    assert gold_preference(OCEAN, "waves firm tide", "waves sharp tide salt", 0.5, 2.0) == pytest.approx(
        1 / (1 + math.exp(-1.5)))


def test_gold_preference_is_symmetric():
    replies = [ROCK, PAPER, SCISSORS, BETTER, WORSE, "stars awful firm firm soft", "the a is"]
    for a in replies:
        for b in replies:
            for w in (0.0, 0.7, 3.0):
                assert gold_preference(OCEAN, a, b, 0.3, w) + gold_preference(OCEAN, b, a, 0.3, w) == pytest.approx(1.0)


def test_annotator_follows_gold_preference():
    # equal gold, w = 1, T = 0.5: rock beats scissors with P = 0.7311; 4000 draws -> std 0.007
    rng = random.Random(0)
    wins = sum(annotate(OCEAN, ROCK, SCISSORS, rng, 0.5, 1.0)[0] == ROCK for _ in range(4000))
    assert wins / 4000 == pytest.approx(0.7311, abs=0.035)
    # w = 0 (the default): a coin flip between equal-gold replies, one draw each, as before
    rng_a, rng_b = random.Random(1), random.Random(1)
    assert [annotate(OCEAN, ROCK, SCISSORS, rng_a, 0.5) for _ in range(50)] == \
        [annotate(OCEAN, ROCK, SCISSORS, rng_b, 0.5, 0.0) for _ in range(50)]
    assert rng_a.random() == rng_b.random()


def test_make_corpus_without_intransitivity_has_no_styles():
    a = make_corpus(**SMALL, seed=0)
    assert a == make_corpus(**SMALL, seed=0, intransitive=0.0)  # the default is 0
    text = json.dumps(a)
    assert not {w.strip('",') for w in text.split()} & STYLE_WORDS
    assert json.dumps(make_corpus(**SMALL, seed=3)) == json.dumps(make_corpus(**SMALL, seed=3, intransitive=0))


INTRANSITIVE = dict(num_prompts=200, sft_per_prompt=5, pairs_per_prompt=6, annotator_temperature=0.5,
                    good_demo_fraction=0.35, intransitive=1.0)


def test_make_corpus_intransitive_styles():
    corpus = make_corpus(**INTRANSITIVE, seed=0)
    assert corpus == make_corpus(**INTRANSITIVE, seed=0)
    plain = make_corpus(**{**INTRANSITIVE, "intransitive": 0.0}, seed=0)
    assert corpus["prompts"] == plain["prompts"]  # same prompts; replies styled
    # every demonstration has a style, drawn from the skewed SFT mix: 1000 demos -> std of a share <= 0.016
    sft = [style_of(r["response"]) for r in corpus["sft"]]
    assert None not in sft
    for style, share in SFT_STYLE_MIX.items():
        assert sft.count(style) / len(sft) == pytest.approx(share, abs=0.05)
    # pair responses are styled uniformly: 2 * ~1200 responses -> std of a share ~0.01
    sides = [style_of(r[side]) for r in corpus["prefs"] for side in ("chosen", "rejected")]
    assert None not in sides
    for style in STYLES_RPS:
        assert sides.count(style) / len(sides) == pytest.approx(1 / 3, abs=0.04)


def test_make_corpus_intransitive_annotations_follow_p_gold():
    corpus = make_corpus(**INTRANSITIVE, seed=1)
    t, w = INTRANSITIVE["annotator_temperature"], INTRANSITIVE["intransitive"]
    p = [gold_preference(r["prompt"], r["chosen"], r["rejected"], t, w) for r in corpus["prefs"]]
    # E[P_gold(chosen > rejected)] = E[P^2 + (1-P)^2] over the drawn pairs; the realised mean of p must match that
    # expectation (each term's variance <= 1/4 of a Bernoulli swing: 1200 pairs -> std of the mean <~ 0.015)
    expected = statistics.fmean(q * q + (1 - q) * (1 - q) for q in p)
    assert statistics.fmean(p) == pytest.approx(expected, abs=0.04)
    assert statistics.fmean(p) > 0.6
    # the style term is real: the chosen reply beats the rejected one in the cycle more often than gold alone explains.
    # A pair {x, y} with P = P_gold(x > y) gives E[C(chosen, rejected)] = (2P - 1) C(x, y), the same from either
    # orientation, so it can be computed from the annotated pair. Observed ~0.17 vs ~0.16 under P_gold and ~0.03 under
    # the gold reward alone (w = 0); 1200 pairs -> std of the observed mean ~0.024.
    edge = [rps(style_of(r["chosen"]), style_of(r["rejected"])) for r in corpus["prefs"]]
    pg = lambda r, w: gold_preference(r["prompt"], r["chosen"], r["rejected"], t, w)  # noqa: E731
    under_p_gold = statistics.fmean((2 * pg(r, w) - 1) * c for r, c in zip(corpus["prefs"], edge))
    under_gold_only = statistics.fmean((2 * pg(r, 0.0) - 1) * c for r, c in zip(corpus["prefs"], edge))
    assert statistics.fmean(edge) == pytest.approx(under_p_gold, abs=0.06)
    assert statistics.fmean(edge) > under_gold_only + 0.08


def test_best_reply_against_sft_is_not_sfts_favourite():
    # E over SFT's style mix of C(s, sft): rock 0.1 - 0.3 = -0.2, paper 0.6 - 0.1 = 0.5, scissors 0.3 - 0.6 = -0.3
    edge = {s: sum(share * rps(s, o) for o, share in SFT_STYLE_MIX.items()) for s in STYLES_RPS}
    assert edge == pytest.approx({"rock": -0.2, "paper": 0.5, "scissors": -0.3})
    assert max(edge, key=edge.get) != max(SFT_STYLE_MIX, key=SFT_STYLE_MIX.get)


# --- what the stages report on the intransitive variant (pure helpers; no model) ---------------------


def test_reward_model_gold_accuracy_uses_p_gold_when_intransitive():
    from alignloop.core.config import TaskConfig
    from alignloop.pipeline.stages.reward_model import gold_accuracy

    pairs = [{"prompt": OCEAN, "chosen": ROCK, "rejected": PAPER},  # equal gold; paper beats rock
             {"prompt": OCEAN, "chosen": BETTER, "rejected": WORSE},  # gold 2.0 vs 1.0, no styles
             {"prompt": OCEAN, "chosen": ROCK, "rejected": ROCK + " waves"}]  # same style; 2.0 vs 1.75 (repeat 1/8)
    scores = ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])  # the model puts chosen first every time
    # w = 0: pair 1 has equal gold -> skipped; pairs 2, 3 agree -> 1.0
    assert gold_accuracy(pairs, *scores, TaskConfig()) == 1.0
    # w = 1: pair 1 P_gold = sigmoid(-1) < 0.5 -> gold puts rejected first, the model disagrees -> 2/3
    assert gold_accuracy(pairs, *scores, TaskConfig(intransitive=1.0)) == pytest.approx(2 / 3)
    # P_gold exactly 0.5 (same reply both sides) is skipped
    same = [{"prompt": OCEAN, "chosen": ROCK, "rejected": ROCK}]
    assert gold_accuracy(same, [1.0], [0.0], TaskConfig(intransitive=1.0)) == 0.0  # nothing left: 0 as before


def test_evaluate_style_shares_and_gold_preferences():
    from alignloop.core.config import Params
    from alignloop.pipeline.stages.evaluate import gold_preferences, style_shares

    assert style_shares([ROCK, PAPER, ROCK, BETTER]) == {"rock": 0.5, "paper": 0.25, "scissors": 0.0, "none": 0.25}
    params = Params.model_validate({"task": {"intransitive": 1.0, "annotator_temperature": 0.5}})
    rows = [{"prompt": OCEAN, "response": ROCK}, {"prompt": OCEAN, "response": PAPER}]
    ref = [{"prompt": OCEAN, "response": SCISSORS}, {"prompt": OCEAN, "response": PAPER}]
    # rock vs scissors at equal gold: sigmoid(1); paper vs paper: 0.5
    assert gold_preferences(rows, ref, params) == pytest.approx([0.7310585786, 0.5])
