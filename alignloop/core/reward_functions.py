"""Example reward functions for the embedded task (pure): verifiable rules to combine with the reward model.

Each follows TRL's reward-function contract, ``f(prompts, completions, **kwargs) -> list[float]`` (this project
passes ``meta``, one dict per row), and accepts completions as strings or in TRL's conversational form (a list of
message dicts, ``[{"role": "assistant", "content": "..."}]``). Each equals one term of the embedded task's gold
reward (alignloop.core.synthetic.gold_reward), so a round can add what the reward model only learned from noisy
preferences as an exact rule, e.g. in params.yaml:

    reward:
      sources:
        - {reward_model: ensemble, weight: 1.0}
        - {function: alignloop.core.reward_functions:length_window, weight: 0.5}
"""

from __future__ import annotations

from alignloop.core.rewards import completion_text
from alignloop.core.synthetic import LENGTH_WINDOW

EMPTY = -4.0  # the gold reward of an empty response


def length_window(prompts, completions, meta=None, **kwargs) -> list[float]:
    """-0.25 per word outside the 6-12 word window, 0 inside (gold_reward's length term)."""
    lo, hi = LENGTH_WINDOW
    out = []
    for c in completions:
        n = len(completion_text(c).split())
        out.append(0.0 - 0.25 * (max(0, lo - n) + max(0, n - hi)))  # 0.0 - 0.0: 0.0 inside, never -0.0
    return out


def repetition_penalty(prompts, completions, meta=None, **kwargs) -> list[float]:
    """-2 x the share of repeated words, 1 - distinct / total (gold_reward's repetition term); an empty response gets
    the gold reward's floor for an empty response, -4."""
    out = []
    for c in completions:
        words = completion_text(c).lower().split()
        out.append(0.0 - 2.0 * (1.0 - len(set(words)) / len(words)) if words else EMPTY)
    return out
