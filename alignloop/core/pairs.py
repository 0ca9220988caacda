"""Pair selection from scored samples (pure functions)."""

from __future__ import annotations

from collections import defaultdict


def group_by_prompt(samples: list[dict], scores: list[dict]) -> dict:
    """Join samples and scores on (prompt_id, sample_idx) into {prompt_id: [(sample, reward), ...]}.

    Raises KeyError naming the first sample that has no score.
    """
    reward = {(s["prompt_id"], s["sample_idx"]): s["reward"] for s in scores}
    groups: dict = defaultdict(list)
    for s in samples:
        key = (s["prompt_id"], s["sample_idx"])
        if key not in reward:
            raise KeyError(f"sample {key} has no score (fix: rerun the score stage)")
        groups[s["prompt_id"]].append((s, reward[key]))
    return dict(groups)


def max_min_pair(candidates: list[tuple[dict, float]], min_margin: float) -> tuple[dict, dict, float, float] | None:
    """Best vs worst of n by reward (RLHF Workflow's rejection sampling).

    Empty responses are left out first: a preference pair needs text on both sides (the data contract).
    Returns ``(chosen, rejected, r_chosen, r_rejected)`` or None when there is no usable pair: fewer than
    two non-empty samples, a margin below ``min_margin`` (ties included), or identical texts. Ties in reward
    are broken by sample order (first best, last worst), so the result is deterministic.
    """
    candidates = [c for c in candidates if c[0]["response"].strip()]
    if len(candidates) < 2:
        return None
    best = max(range(len(candidates)), key=lambda i: (candidates[i][1], -i))
    worst = min(range(len(candidates)), key=lambda i: (candidates[i][1], -i))
    (c, rc), (r, rr) = candidates[best], candidates[worst]
    margin = rc - rr
    if best == worst or margin <= 0 or margin < min_margin:
        return None
    if c["response"].strip() == r["response"].strip():
        return None
    return c, r, rc, rr


def select_pairs(groups: dict, min_margin: float, round_name: str, pick=None, source: str | None = None) -> list[dict]:
    """One preference pair per prompt, in prompt-id order: best vs worst, or ``pick(candidates)`` (a strategy of
    alignloop.core.selection) when given."""
    pick = pick or (lambda cands: max_min_pair(cands, min_margin))
    pairs = []
    for pid in sorted(groups):
        picked = pick(groups[pid])
        if picked is None:
            continue
        c, r, rc, rr = picked
        pairs.append({
            "id": f"{round_name}-{pid}",
            "prompt": c["prompt"],
            "chosen": c["response"],
            "rejected": r["response"],
            "chosen_score": rc,
            "rejected_score": rr,
            "source": source or f"rejection_sampling:{round_name}",
        })
    return pairs


def read_groups(samples_path: str, scores_path: str) -> dict:
    """A round's samples joined with their scores, by prompt (group_by_prompt); a sample without a score is a
    DataError naming the scores file."""
    from alignloop.core import files

    samples = files.read_jsonl(samples_path, files.validate_sample, id_key=files.SAMPLE_KEY)
    scores = files.read_jsonl(scores_path, files.validate_score, id_key=files.SAMPLE_KEY)
    try:
        return group_by_prompt(samples, scores)
    except KeyError as exc:
        raise files.DataError(f"{scores_path}: {exc.args[0]}") from None
