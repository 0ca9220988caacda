"""Curation: exact dedup, length filters and a stable train/eval split by prompt. Pure: no IO.

Input rows are already validated and normalized (see :mod:`alignloop.core.adapters` and the validators in
:mod:`alignloop.core.files`): prompts ``{id, prompt, meta?}``, SFT ``{id, prompt, response}``, pairs
``{id, prompt, chosen, rejected, source?}``.

The split is decided per distinct prompt by a hash of ``(seed, prompt)``, so adding prompts never moves
existing ones between train and eval. Every SFT row or pair whose prompt is an eval prompt stays out of
training: pairs go to the eval preference set, SFT rows are removed. With ``judge_fraction`` > 0 the same hash puts
a further share of prompts in the judge split: their pairs train only the held-out judge model (stage judge_model),
and nothing else sees them — not SFT, not the reward model, not the rounds' prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from alignloop.core.adapters import prompt_chars, prompt_text
from alignloop.core.config import CurateConfig

KINDS = ("prompts", "sft", "prefs")


class Dropped(NamedTuple):
    """A row removed by a filter: ``kind`` is 'too_long' or 'too_short'; ``reason`` says which field and why."""

    row: dict
    kind: str
    reason: str


# --- dedup --------------------------------------------------------------------------------------


def exact_dedup(rows: Iterable[dict], key_fn: Callable[[dict], Hashable]) -> tuple[list[dict], list[dict]]:
    """Keep the first row of every key; return ``(kept, duplicates)`` in input order."""
    seen: set = set()
    kept: list[dict] = []
    dups: list[dict] = []
    for row in rows:
        key = key_fn(row)
        if key in seen:
            dups.append(row)
        else:
            seen.add(key)
            kept.append(row)
    return kept, dups


def prompt_key(row: dict) -> str:
    return prompt_text(row["prompt"])


def sft_key(row: dict) -> tuple[str, str]:
    return prompt_text(row["prompt"]), row["response"].strip()


def pair_key(row: dict) -> tuple[str, str, str]:
    return prompt_text(row["prompt"]), row["chosen"].strip(), row["rejected"].strip()


# --- split --------------------------------------------------------------------------------------


def eval_score(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, prompt key): below eval_fraction means eval."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_prompts(prompt_keys: Iterable[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split distinct prompt keys into ``(train, eval)``, each in first-seen input order.

    A key is eval iff ``eval_score(key, seed) < eval_fraction``, so membership does not depend on the other
    keys. With two or more distinct keys both sides are non-empty: if one side would be empty, the key
    nearest the threshold moves over (only tiny inputs are affected).
    """
    keys = list(dict.fromkeys(prompt_keys))
    scores = {k: eval_score(k, seed) for k in keys}
    eval_set = {k for k in keys if scores[k] < eval_fraction}
    if len(keys) >= 2:
        if not eval_set:
            eval_set.add(min(keys, key=scores.__getitem__))
        elif len(eval_set) == len(keys):
            eval_set.discard(max(keys, key=scores.__getitem__))
    return [k for k in keys if k not in eval_set], [k for k in keys if k in eval_set]


# --- length filters -----------------------------------------------------------------------------


def filter_prompt_length(rows: Iterable[dict], max_chars: int) -> tuple[list[dict], list[Dropped]]:
    """Drop rows whose prompt (string, or total message content) is longer than ``max_chars``."""
    kept: list[dict] = []
    dropped: list[Dropped] = []
    for row in rows:
        n = prompt_chars(row["prompt"])
        if n > max_chars:
            dropped.append(Dropped(row, "too_long", f"prompt has {n} chars > max_prompt_chars {max_chars}"))
        else:
            kept.append(row)
    return kept, dropped


def filter_response_length(
    rows: Iterable[dict], fields: Iterable[str], min_chars: int, max_chars: int
) -> tuple[list[dict], list[Dropped]]:
    """Drop rows where any of ``fields`` (stripped) is shorter than ``min_chars`` or longer than ``max_chars``."""
    fields = tuple(fields)
    kept: list[dict] = []
    dropped: list[Dropped] = []
    for row in rows:
        problem = None
        for f in fields:
            n = len(row[f].strip())
            if n > max_chars:
                problem = Dropped(row, "too_long", f"'{f}' has {n} chars > max_response_chars {max_chars}")
            elif n < min_chars:
                problem = Dropped(row, "too_short", f"'{f}' has {n} chars < min_response_chars {min_chars}")
            if problem:
                break
        if problem:
            dropped.append(problem)
        else:
            kept.append(row)
    return kept, dropped


def filter_lengths(
    rows: Iterable[dict], cfg: CurateConfig, response_fields: Iterable[str] = ()
) -> tuple[list[dict], list[Dropped]]:
    """Prompt-length filter, then response-length filter on ``response_fields``."""
    kept, dropped = filter_prompt_length(rows, cfg.max_prompt_chars)
    kept, dropped2 = filter_response_length(kept, response_fields, cfg.min_response_chars, cfg.max_response_chars)
    return kept, dropped + dropped2


# --- the whole curation -------------------------------------------------------------------------


def stable_id(*parts: Any, prefix: str = "h") -> str:
    """A short id fixed by content, for rows that come without one."""
    text = "\x1f".join(p if isinstance(p, str) else prompt_text(p) for p in parts)
    return f"{prefix}{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"


@dataclass
class Curated:
    """The curated sets (rows ready to write) and the counts."""

    prompts_train: list[dict]
    prompts_eval: list[dict]
    sft: list[dict]
    prefs_train: list[dict]
    prefs_eval: list[dict]
    metrics: dict[str, Any]
    dropped: list[Dropped] = field(default_factory=list)
    prefs_judge: list[dict] = field(default_factory=list)


def _clean(rows: list[dict], cfg: CurateConfig, key_fn, fields) -> tuple[list[dict], dict, list[Dropped]]:
    """Exact dedup then length filters; the counts of what each removed."""
    kept, dups = exact_dedup(rows, key_fn)
    kept, dropped = filter_lengths(kept, cfg, fields)
    counts = {
        "duplicates": len(dups),
        "too_long": sum(d.kind == "too_long" for d in dropped),
        "too_short": sum(d.kind == "too_short" for d in dropped),
    }
    return kept, counts, dropped


def curate(
    prompts: list[dict] | None,
    sft: list[dict] | None,
    pairs: list[dict],
    cfg: CurateConfig,
    seed: int,
    *,
    quarantined: Mapping[str, int] | None = None,
    extra_eval: list[dict] | None = None,
) -> Curated:
    """Dedup, filter and split validated rows; return the curated sets and their counts.

    ``prompts=None``: the prompts are the distinct prompts of the kept pairs (ids by content hash).
    ``sft=None``: the SFT examples are (prompt, chosen) of the kept train pairs.
    ``quarantined``: rows per kind ('prompts', 'sft', 'prefs') the caller already rejected, so the metrics
    account for every input row: for each given kind
    ``input = quarantined + duplicates + too_long + too_short + kept (+ sft rows removed for eval prompts)``.
    ``extra_eval``: further held-out prompt rows (curate.extra_eval_prompts; quarantined count under the key
    'extra_eval'): always eval, whatever their hash; source rows with one of these prompts leave training.
    """
    quarantined = dict(quarantined or {})
    by_kind: dict[str, dict[str, Any]] = {}
    dropped: list[Dropped] = []

    pairs_kept, counts, d = _clean(pairs, cfg, pair_key, ("chosen", "rejected"))
    by_kind["prefs"] = {"input": len(pairs) + quarantined.get("prefs", 0), "quarantined": quarantined.get("prefs", 0), **counts}
    dropped += d

    if prompts is None:
        derived = {}
        for p in pairs_kept:
            derived.setdefault(prompt_key(p), {"id": stable_id(p["prompt"], prefix="p"), "prompt": p["prompt"]})
        prompts_kept = list(derived.values())
        by_kind["prompts"] = {"derived_from": "prefs"}
    else:
        prompts_kept, counts, d = _clean(prompts, cfg, prompt_key, ())
        by_kind["prompts"] = {
            "input": len(prompts) + quarantined.get("prompts", 0), "quarantined": quarantined.get("prompts", 0), **counts
        }
        dropped += d

    extra_kept: list[dict] = []
    if extra_eval is not None:
        extra_kept, counts, d = _clean(extra_eval, cfg, prompt_key, ())
        by_kind["extra_eval"] = {"input": len(extra_eval) + quarantined.get("extra_eval", 0),
                                 "quarantined": quarantined.get("extra_eval", 0), **counts}
        dropped += d
    forced = {prompt_key(r) for r in extra_kept}

    # Split the prompts; prompts that appear only in sft/pairs use the same per-key hash rule.
    train_keys, eval_keys = split_prompts((prompt_key(r) for r in prompts_kept if prompt_key(r) not in forced),
                                          cfg.eval_fraction, seed)
    eval_set, known = set(eval_keys) | forced, set(train_keys) | set(eval_keys) | forced

    def is_eval(row: dict) -> bool:
        k = prompt_key(row)
        return k in eval_set if k in known else eval_score(k, seed) < cfg.eval_fraction

    def is_judge(row: dict) -> bool:  # the next judge_fraction of the same hash, above the eval share
        if cfg.judge_fraction == 0 or is_eval(row):
            return False
        return cfg.eval_fraction <= eval_score(prompt_key(row), seed) < cfg.eval_fraction + cfg.judge_fraction

    def is_train(row: dict) -> bool:
        return not is_eval(row) and not is_judge(row)

    prompts_train = [r for r in prompts_kept if is_train(r)]
    prompts_eval = [r for r in prompts_kept if is_eval(r)]
    in_data = {prompt_key(r) for r in prompts_eval}
    new_extra = [r for r in extra_kept if prompt_key(r) not in in_data]
    prompts_eval += new_extra
    if extra_eval is not None:
        by_kind["extra_eval"].update(eval=len(new_extra), already_in_data=len(extra_kept) - len(new_extra))
    prefs_train = [r for r in pairs_kept if is_train(r)]
    prefs_eval = [r for r in pairs_kept if is_eval(r)]
    prefs_judge = [r for r in pairs_kept if is_judge(r)]
    by_kind["prefs"].update(train=len(prefs_train), eval=len(prefs_eval), judge=len(prefs_judge))
    by_kind["prompts"].update(train=len(prompts_train), eval=len(prompts_eval),
                              judge=sum(map(is_judge, prompts_kept)))

    removed_for_eval = 0
    if sft is None:
        derived_sft = [{"id": p["id"], "prompt": p["prompt"], "response": p["chosen"]} for p in prefs_train]
        sft_kept, dups = exact_dedup(derived_sft, sft_key)
        by_kind["sft"] = {"derived_from": "prefs", "duplicates": len(dups), "train": len(sft_kept)}
    else:
        sft_clean, counts, d = _clean(sft, cfg, sft_key, ("response",))
        dropped += d
        sft_kept = [r for r in sft_clean if is_train(r)]
        removed_for_eval = len(sft_clean) - len(sft_kept)  # eval and judge prompts
        by_kind["sft"] = {
            "input": len(sft) + quarantined.get("sft", 0), "quarantined": quarantined.get("sft", 0), **counts,
            "removed_eval_prompt": removed_for_eval, "train": len(sft_kept),
        }

    primary = [k for k in (*KINDS, "extra_eval") if "input" in by_kind.get(k, {})]

    def total(name: str) -> int:
        return sum(by_kind[k].get(name, 0) for k in primary)

    metrics: dict[str, Any] = {
        "input_rows": total("input"),
        "quarantined": total("quarantined"),
        "duplicates_removed": total("duplicates"),
        "too_long_dropped": total("too_long"),
        "too_short_dropped": total("too_short"),
        "train_prompts": len(prompts_train),
        "eval_prompts": len(prompts_eval),
        "sft_train_rows": len(sft_kept),
        "pref_train_rows": len(prefs_train),
        "pref_eval_rows": len(prefs_eval),
        "pref_judge_rows": len(prefs_judge),
        "eval_prompt_rows_removed_from_train": removed_for_eval,
        "by_kind": by_kind,
    }
    kept_primary = {"prompts": len(prompts_kept), "sft": len(sft_kept), "prefs": len(pairs_kept),
                    "extra_eval": len(extra_kept)}
    metrics["kept_rows"] = sum(kept_primary[k] for k in primary)
    return Curated(prompts_train, prompts_eval, sft_kept, prefs_train, prefs_eval, metrics, dropped, prefs_judge)
