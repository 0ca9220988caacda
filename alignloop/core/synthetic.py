"""The embedded synthetic task: topic prompts, short replies, and a hidden gold reward.

A prompt asks for a short note on a topic. The gold reward prefers replies that
  * stay on the prompt's topic (share of words from the topic's vocabulary),
  * use positive rather than negative wording,
  * do not repeat words,
  * have 6-12 words.
The reward model and the policy never call :func:`gold_reward`; only the corpus generator (to simulate
annotators) and evaluation do. Everything here is pure and deterministic given a ``random.Random``.
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


def topic_of(prompt: str) -> str | None:
    """The topic a prompt asks about (the last word that names a topic)."""
    for word in reversed(prompt.lower().split()):
        if word in TOPICS:
            return word
    return None


def gold_reward(prompt: str, response: str) -> float:
    """Hidden gold reward of a response to a prompt. Higher is better; roughly in [-4, 3].

    = 2 * on-topic share of content words
      + 0.5 * min(#positive words, 2) - 0.5 * #negative words
      - 2 * repeated-word share
      - 0.25 * words outside the 6-12 length window
    """
    words = response.lower().split()
    if not words:
        return -4.0
    topic = topic_of(prompt)
    topic_words = set(TOPICS.get(topic, [])) | ({topic} if topic else set())
    content = [w for w in words if w not in FILLER]
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


def annotate(prompt: str, a: str, b: str, rng: random.Random, temperature: float) -> tuple[str, str, float, float]:
    """Simulated annotator: prefers ``a`` with P = sigmoid((gold(a) - gold(b)) / T). Returns (chosen, rejected, g_c, g_r)."""
    ga, gb = gold_reward(prompt, a), gold_reward(prompt, b)
    p_a = 1.0 / (1.0 + math.exp(-(ga - gb) / temperature))
    if rng.random() < p_a:
        return a, b, ga, gb
    return b, a, gb, ga


def make_corpus(
    num_prompts: int,
    sft_per_prompt: int,
    pairs_per_prompt: int,
    annotator_temperature: float,
    good_demo_fraction: float,
    seed: int,
) -> dict[str, list[dict]]:
    """The raw corpus of the embedded task: prompts, mixed-quality demonstrations, annotated pairs."""
    rng = random.Random(seed)
    prompts = make_prompts(num_prompts, rng)
    prompt_rows, sft_rows, pair_rows = [], [], []
    for i, prompt in enumerate(prompts):
        pid = f"p{i:05d}"
        prompt_rows.append({"id": pid, "prompt": prompt, "meta": {"topic": topic_of(prompt)}})
        for j in range(sft_per_prompt):
            quality = 1.0 if rng.random() < good_demo_fraction else rng.uniform(0.0, 0.7)
            sft_rows.append({"id": f"{pid}-s{j}", "prompt": prompt, "response": write_response(prompt, rng, quality)})
        for j in range(pairs_per_prompt):
            a = write_response(prompt, rng, rng.random())
            b = write_response(prompt, rng, rng.random())
            if a == b:
                continue
            chosen, rejected, gc, gr = annotate(prompt, a, b, rng, annotator_temperature)
            pair_rows.append({"id": f"{pid}-p{j}", "prompt": prompt, "chosen": chosen, "rejected": rejected, "source": "annotator"})
    return {"prompts": prompt_rows, "sft": sft_rows, "prefs": pair_rows}
