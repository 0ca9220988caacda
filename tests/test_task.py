"""The embedded synthetic task: gold reward on hand-built replies, prompts, corpus, simulated annotator.

gold = 2 * on-topic share of content words (words not in FILLER)
       + 0.5 * min(#positive, 2) - 0.5 * #negative
       - 2 * (1 - #distinct words / #words)
       - 0.25 * (words below 6 + words above 12)
Every expected value below is worked out by hand in the comment next to it.
"""

from __future__ import annotations

import random
import statistics

import pytest

from alignloop.core.synthetic import (
    FILLER,
    LENGTH_WINDOW,
    NEGATIVE,
    POSITIVE,
    STYLES,
    TEMPLATES,
    TOPICS,
    annotate,
    gold_reward,
    make_corpus,
    make_prompts,
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
