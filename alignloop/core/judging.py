"""Pairwise LLM-as-judge arithmetic: the prompt, the verdict, both orders, position bias, length control.

Pure functions; the HTTP client is alignloop/ml/llm_judge.py and the stage alignloop/pipeline/stages/llm_judge.py.
AlpacaEval-style: every pair is judged twice, once with the candidate shown first and once second, so a judge that
prefers a position cannot make either side win; the length-controlled win-rate is AlpacaEval 2's logistic length
correction (Dubois et al. 2024, "Length-Controlled AlpacaEval"), fitted on one candidate/baseline pair.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence

DEFAULT_TEMPLATE = (
    "You are comparing two responses to the same instruction. Judge which response follows the instruction "
    "better: helpful, correct, and to the point. Do not let the order of the responses or their length decide.\n\n"
    "## Instruction\n{instruction}\n\n"
    "## Response 1\n{response_1}\n\n"
    "## Response 2\n{response_2}\n\n"
    "Which response is better? Answer with a single character: 1 or 2."
)
PLACEHOLDERS = ("{instruction}", "{response_1}", "{response_2}")


def template_errors(template: str) -> list[str]:
    """What is wrong with a judge template: each placeholder must appear exactly once."""
    return [f"the template must contain {p} exactly once (it has {template.count(p)})"
            for p in PLACEHOLDERS if template.count(p) != 1]


def instruction_text(prompt) -> str:
    """A prompt as the judge reads it: a string as is, a chat (list of messages) as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def render(template: str, instruction: str, response_1: str, response_2: str) -> str:
    """The judge's user message. Placeholders are replaced in one pass, so braces or a placeholder's text inside a
    response are left as they are (str.format would choke on the braces)."""
    values = {"{instruction}": instruction, "{response_1}": response_1, "{response_2}": response_2}
    return re.sub("|".join(re.escape(p) for p in PLACEHOLDERS), lambda m: values[m.group(0)], template)


_VERDICT = re.compile(r"^\W*(?:response\s*|output\s*)?([12])(?!\d)", re.I)


def parse_verdict(answer: str | None) -> int | None:
    """1 or 2 from the judge's answer ("1", " 2.", "Response 2", "[[1]]"), or None when it names neither."""
    if not answer:
        return None
    m = _VERDICT.match(answer.strip())
    return int(m.group(1)) if m else None


def cache_key(judge_model: str, template: str, instruction: str, response_1: str, response_2: str) -> str:
    """Identity of one judgment: a rerun with the same judge, template and texts is answered from the cache."""
    blob = json.dumps([judge_model, template, instruction, response_1, response_2], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def pair_preference(candidate_first: int | None, candidate_second: int | None) -> float:
    """The candidate's outcome over both orders: the verdict with the candidate shown first (1 = candidate) and with
    it shown second (2 = candidate). 1 win in both, 0 loss in both, 0.5 when the orders disagree; an unparsed verdict
    (None) counts as half a win for each side."""
    def won(verdict: int | None, position: int) -> float:
        return 0.5 if verdict is None else float(verdict == position)

    return (won(candidate_first, 1) + won(candidate_second, 2)) / 2


def first_position_rate(verdicts: Sequence[int | None]) -> float:
    """Share of parsed verdicts that chose the response shown first: 0.5 for a judge without position bias (each
    pair is shown in both orders, so a fair judge picks each position equally often)."""
    parsed = [v for v in verdicts if v is not None]
    if not parsed:
        raise ValueError("no parsed verdicts")
    return sum(v == 1 for v in parsed) / len(parsed)


def order_agreement(candidate_first: Sequence[int | None], candidate_second: Sequence[int | None]) -> float:
    """Share of pairs whose two orders named the same response (a verdict of 1 then 2 means the candidate twice)."""
    pairs = [(a, b) for a, b in zip(candidate_first, candidate_second) if a is not None and b is not None]
    if not pairs:
        raise ValueError("no pair with both verdicts parsed")
    return sum(a != b for a, b in pairs) / len(pairs)


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def length_controlled_win_rate(preferences: Sequence[float], candidate_lengths: Sequence[float],
                               baseline_lengths: Sequence[float], *, l2: float = 1e-3, iters: int = 50) -> float:
    """AlpacaEval 2's length-controlled win-rate for one candidate against one baseline.

    Fits P(candidate preferred) = sigmoid(theta + phi * tanh(d / std(d))), d the length difference per pair, by
    logistic regression on the (possibly fractional) preferences, and returns sigmoid(theta): the win-rate the judge
    would give if both responses had the same length. Newton's method on the two parameters, with a small L2 penalty
    so a judge that always prefers one side (perfect separation) still gives a finite fit. With no length differences
    at all it equals the raw win-rate (up to the penalty).
    """
    n = len(preferences)
    if n == 0 or len(candidate_lengths) != n or len(baseline_lengths) != n:
        raise ValueError("length_controlled_win_rate needs equal, non-empty sequences")
    d = [a - b for a, b in zip(candidate_lengths, baseline_lengths)]
    mu = sum(d) / n
    sd = math.sqrt(sum((x - mu) ** 2 for x in d) / n)
    # AlpacaEval divides by the std of the difference without centring it: a zero difference stays zero.
    x = [math.tanh(v / sd) if sd > 0 else 0.0 for v in d]
    theta = phi = 0.0
    for _ in range(iters):
        g_t = g_p = 0.0
        h_tt = h_tp = h_pp = 0.0
        for xi, yi in zip(x, preferences):
            p = _sigmoid(theta + phi * xi)
            w = p * (1 - p)
            g_t += p - yi
            g_p += (p - yi) * xi
            h_tt += w
            h_tp += w * xi
            h_pp += w * xi * xi
        # Mean loss plus l2/2 * (theta^2 + phi^2): gradient and Hessian.
        g_t, g_p = g_t / n + l2 * theta, g_p / n + l2 * phi
        h_tt, h_tp, h_pp = h_tt / n + l2, h_tp / n, h_pp / n + l2
        det = h_tt * h_pp - h_tp * h_tp
        if sd == 0 or det <= 0:  # no length differences: the length term is void, fit theta alone
            step_t, step_p = g_t / h_tt, 0.0
        else:
            step_t = (h_pp * g_t - h_tp * g_p) / det
            step_p = (h_tt * g_p - h_tp * g_t) / det
        theta, phi = theta - step_t, phi - step_p
        if abs(step_t) < 1e-10 and abs(step_p) < 1e-10:
            break
    return _sigmoid(theta)
