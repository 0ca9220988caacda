"""The embedded synthetic task: topic prompts, short replies, and a hidden gold reward.

A prompt asks for a short note on a topic. The gold reward prefers replies that
  * stay on the prompt's topic (share of words from the topic's vocabulary),
  * use positive rather than negative wording,
  * do not repeat words,
  * have 6-12 words.
The reward model and the policy never call :func:`gold_reward`; only the corpus generator (to simulate
annotators) and evaluation do. Everything here is pure and deterministic given a ``random.Random``.

The intransitive variant (``task.intransitive`` = w > 0) adds three response styles, rock, paper and scissors, each
marked by a few words of its own (:data:`STYLES_RPS`; neutral for the gold reward, like filler). The annotators'
true preference is then
    P_gold(a > b) = sigmoid((gold(a) - gold(b)) / T + w * C(style(a), style(b))),   C = +1 / -1 / 0
(:func:`gold_preference`): rock beats scissors, scissors beats paper, paper beats rock, so no scalar reward explains
it. SFT demonstrations favour one style (:data:`SFT_STYLE_MIX`, mostly rock) while annotated pairs are styled
uniformly; the reply that does best against SFT is then paper, which a Bradley-Terry reward model fitted to the
uniform pairs cannot tell apart from the other styles (by symmetry all three get the same reward) but a pairwise
preference model can. With w = 0 nothing is styled and the corpus is exactly the transitive task's.
"""

from __future__ import annotations

import math
import random

TOPICS: dict[str, list[str]] = {
    "ocean": ["waves", "tide", "salt", "shore", "blue", "deep", "coral", "sail"],
    "forest": ["trees", "moss", "leaves", "pine", "shade", "trail", "birds", "green"],
    "music": ["song", "melody", "rhythm", "piano", "chorus", "beat", "notes", "band"],
    "coffee": ["beans", "roast", "cup", "aroma", "brew", "espresso", "milk", "morning"],
    "space": ["stars", "orbit", "planet", "rocket", "moon", "galaxy", "comet", "dark"],
    "garden": ["flowers", "soil", "roses", "seeds", "bloom", "herbs", "rain", "bees"],
    "city": ["streets", "lights", "traffic", "towers", "crowd", "market", "bridge", "night"],
    "winter": ["snow", "frost", "ice", "fire", "scarf", "cold", "sled", "white"],
    "books": ["pages", "story", "chapter", "author", "library", "ink", "novel", "read"],
    "cooking": ["recipe", "spice", "oven", "bread", "soup", "taste", "knife", "herbs"],
}
POSITIVE = ["lovely", "great", "bright", "calm", "warm", "happy", "gentle", "fresh", "kind", "sweet"]
NEGATIVE = ["awful", "dull", "boring", "sad", "gloomy", "bad", "harsh", "grim", "ugly", "weak"]
FILLER = ["the", "a", "is", "and", "with", "of", "so", "very", "it", "feels", "my", "we"]
TEMPLATES = [
    "tell me about {t}",
    "write a note on {t}",
    "describe {t} in a few words",
    "say something about {t}",
    "what do you think of {t}",
    "give me a line about {t}",
    "share a thought on {t}",
    "talk about {t}",
]
STYLES = ["", "please ", "quickly ", "kindly ", "now ", "briefly "]

LENGTH_WINDOW = (6, 12)

# The intransitive variant's response styles (not the prompt prefixes above): marker words found in no other list.
STYLES_RPS: dict[str, list[str]] = {
    "rock": ["solid", "firm", "steady"],
    "paper": ["soft", "light", "airy"],
    "scissors": ["sharp", "crisp", "keen"],
}
BEATS: dict[str, str] = {"rock": "scissors", "scissors": "paper", "paper": "rock"}  # style -> the style it beats
# The SFT demonstrations' style mix: skewed, so the best reply against SFT (paper: +0.6 - 0.1) is not SFT's
# favourite (rock: +0.1 - 0.3). Annotated pairs draw styles uniformly.
SFT_STYLE_MIX: dict[str, float] = {"rock": 0.6, "paper": 0.3, "scissors": 0.1}
_STYLE_OF_WORD: dict[str, str] = {w: style for style, ws in STYLES_RPS.items() for w in ws}


def topic_of(prompt: str) -> str | None:
    """The topic a prompt asks about (the last word that names a topic)."""
    for word in reversed(prompt.lower().split()):
        if word in TOPICS:
            return word
    return None


def gold_reward(prompt: str, response: str) -> float:
    """Hidden gold reward of a response to a prompt. Higher is better; roughly in [-4, 3].

    = 2 * on-topic share of content words (words neither filler nor style markers)
      + 0.5 * min(#positive words, 2) - 0.5 * #negative words
      - 2 * repeated-word share
      - 0.25 * words outside the 6-12 length window
    """
    words = response.lower().split()
    if not words:
        return -4.0
    topic = topic_of(prompt)
    topic_words = set(TOPICS.get(topic, [])) | ({topic} if topic else set())
    content = [w for w in words if w not in FILLER and w not in _STYLE_OF_WORD]  # style markers are neutral
    on_topic = sum(w in topic_words for w in content) / len(content) if content else 0.0
    pos = sum(w in POSITIVE for w in words)
    neg = sum(w in NEGATIVE for w in words)
    repeated = 1.0 - len(set(words)) / len(words)
    lo, hi = LENGTH_WINDOW
    outside = max(0, lo - len(words)) + max(0, len(words) - hi)
    return 2.0 * on_topic + 0.5 * min(pos, 2) - 0.5 * neg - 2.0 * repeated - 0.25 * outside


def make_prompts(num_prompts: int, rng: random.Random) -> list[str]:
    """Distinct prompts: topics x templates x styles, shuffled, first ``num_prompts``."""
    prompts = [f"{s}{tpl.format(t=t)}" for t in TOPICS for tpl in TEMPLATES for s in STYLES]
    rng.shuffle(prompts)
    return prompts[:num_prompts]


def write_response(prompt: str, rng: random.Random, quality: float) -> str:
    """A reply written by a simulated writer; ``quality`` in [0, 1] is how careful the writer is.

    Careless writers drift off topic, use negative words, repeat themselves and miss the length window.
    """
    topic = topic_of(prompt) or rng.choice(list(TOPICS))
    others = [w for t, ws in TOPICS.items() if t != topic for w in ws]
    lo, hi = LENGTH_WINDOW
    if rng.random() < quality:
        length = rng.randint(lo, hi)
    else:
        length = rng.choice([rng.randint(2, lo - 1), rng.randint(hi + 1, hi + 8)])
    words: list[str] = []
    for _ in range(length):
        r = rng.random()
        if words and rng.random() < 0.35 * (1 - quality):
            words.append(rng.choice(words))  # repetition
        elif r < 0.25:
            words.append(rng.choice(FILLER))
        elif r < 0.25 + 0.55 * (0.4 + 0.6 * quality):
            words.append(rng.choice(TOPICS[topic]))
        elif rng.random() < 0.3 + 0.6 * quality:
            words.append(rng.choice(POSITIVE) if rng.random() < 0.3 + 0.7 * quality else rng.choice(NEGATIVE))
        else:
            words.append(rng.choice(others))
    return " ".join(words)


def sigmoid(x: float) -> float:
    """The logistic function, safe for any float: 1 / (1 + e^-x), which is e^x to double precision where e^-x would
    overflow. Elsewhere it is exactly the formula the transitive annotator has always used (same bits, same draws)."""
    if x < -700.0:
        return math.exp(x)
    return 1.0 / (1.0 + math.exp(-x))


def style_of(response: str) -> str | None:
    """The rock-paper-scissors style of a reply: the style whose marker words occur most often; None when no marker
    occurs or the top count is tied."""
    counts: dict[str, int] = {}
    for word in response.lower().split():
        style = _STYLE_OF_WORD.get(word)
        if style is not None:
            counts[style] = counts.get(style, 0) + 1
    if not counts:
        return None
    top = max(counts.values())
    best = [style for style, n in counts.items() if n == top]
    return best[0] if len(best) == 1 else None


def rps(style_a: str | None, style_b: str | None) -> int:
    """C(a, b) of the intransitive preference: +1 when style a beats style b, -1 when b beats a, 0 when they are
    equal or either reply has no style."""
    if style_a is None or style_b is None or style_a == style_b:
        return 0
    return 1 if BEATS[style_a] == style_b else -1


def add_style(response: str, style: str, rng: random.Random) -> str:
    """``response`` with 1-2 distinct marker words of ``style`` inserted at random positions."""
    words = response.split()
    for marker in rng.sample(STYLES_RPS[style], rng.randint(1, 2)):
        words.insert(rng.randint(0, len(words)), marker)
    return " ".join(words)


def _p_gold(ga: float, gb: float, a: str, b: str, temperature: float, intransitive: float) -> float:
    """P_gold(a > b) from the replies' gold rewards (see :func:`gold_preference`)."""
    x = (ga - gb) / temperature
    if intransitive:
        x += intransitive * rps(style_of(a), style_of(b))
    return sigmoid(x)


def gold_preference(prompt: str, a: str, b: str, temperature: float, intransitive: float = 0.0) -> float:
    """The annotators' true probability of preferring reply ``a`` to reply ``b``:

        P_gold(a > b) = sigmoid((gold(a) - gold(b)) / temperature + intransitive * rps(style_of(a), style_of(b)))

    With ``intransitive`` 0 it is Bradley-Terry on :func:`gold_reward`; above 0 the style term makes it cyclic
    (rock > scissors > paper > rock at equal gold), so no scalar reward reproduces it. P(a > b) + P(b > a) = 1.
    Like :func:`gold_reward`, only the corpus generator and evaluation may call it.
    """
    return _p_gold(gold_reward(prompt, a), gold_reward(prompt, b), a, b, temperature, intransitive)


def annotate(prompt: str, a: str, b: str, rng: random.Random, temperature: float,
             intransitive: float = 0.0) -> tuple[str, str, float, float]:
    """Simulated annotator: prefers ``a`` with P = :func:`gold_preference` (sigmoid((gold(a) - gold(b)) / T) when
    ``intransitive`` is 0), one ``rng.random()`` draw. Returns (chosen, rejected, g_c, g_r)."""
    ga, gb = gold_reward(prompt, a), gold_reward(prompt, b)
    if rng.random() < _p_gold(ga, gb, a, b, temperature, intransitive):
        return a, b, ga, gb
    return b, a, gb, ga


def _draw_style(rng: random.Random, mix: dict[str, float] | None = None) -> str:
    """A style drawn from ``mix`` (style -> weight), uniformly when None."""
    styles = list(STYLES_RPS)
    if mix is None:
        return rng.choice(styles)
    return rng.choices(styles, weights=[mix[s] for s in styles])[0]


def make_corpus(
    num_prompts: int,
    sft_per_prompt: int,
    pairs_per_prompt: int,
    annotator_temperature: float,
    good_demo_fraction: float,
    seed: int,
    intransitive: float = 0.0,
) -> dict[str, list[dict]]:
    """The raw corpus of the embedded task: prompts, mixed-quality demonstrations, annotated pairs.

    ``intransitive`` > 0: each demonstration is styled from :data:`SFT_STYLE_MIX`, each pair response uniformly, and
    the annotators follow :func:`gold_preference` with that weight. At 0 nothing is styled and the random stream is
    consumed exactly as in the transitive task, so its corpus is unchanged.
    """
    rng = random.Random(seed)
    prompts = make_prompts(num_prompts, rng)
    prompt_rows, sft_rows, pair_rows = [], [], []
    for i, prompt in enumerate(prompts):
        pid = f"p{i:05d}"
        prompt_rows.append({"id": pid, "prompt": prompt, "meta": {"topic": topic_of(prompt)}})
        for j in range(sft_per_prompt):
            quality = 1.0 if rng.random() < good_demo_fraction else rng.uniform(0.0, 0.7)
            demo = write_response(prompt, rng, quality)
            if intransitive:
                demo = add_style(demo, _draw_style(rng, SFT_STYLE_MIX), rng)
            sft_rows.append({"id": f"{pid}-s{j}", "prompt": prompt, "response": demo})
        for j in range(pairs_per_prompt):
            a = write_response(prompt, rng, rng.random())
            if intransitive:
                a = add_style(a, _draw_style(rng), rng)
            b = write_response(prompt, rng, rng.random())
            if intransitive:
                b = add_style(b, _draw_style(rng), rng)
            if a == b:
                continue
            chosen, rejected, gc, gr = annotate(prompt, a, b, rng, annotator_temperature, intransitive)
            pair_rows.append({"id": f"{pid}-p{j}", "prompt": prompt, "chosen": chosen, "rejected": rejected, "source": "annotator"})
    return {"prompts": prompt_rows, "sft": sft_rows, "prefs": pair_rows}
