"""Shards: a stage's work as K contiguous runs of fixed units (generation batches, scoring blocks).

A unit always holds the same rows and is computed the same way (same seed, same batches), so a shard computed by
another process — a Prefect task, a Ray task on another node — is the very slice one process would have written,
and the stage merges shards into a byte-identical output. The files of a shard cache are named by their unit
range, ``b<start>-<end>.jsonl``.
"""

from __future__ import annotations

from pathlib import Path


def shard_range(num_units: int, index: int, count: int) -> tuple[int, int]:
    """Unit range [start, end) of shard ``index`` of ``count``: contiguous, balanced, covering all units."""
    return num_units * index // count, num_units * (index + 1) // count


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/K"`` of a ``--shard`` argument as (I, K)."""
    try:
        i, k = (int(x) for x in text.split("/"))
        assert 0 <= i < k
        return i, k
    except (ValueError, AssertionError):
        raise SystemExit(f"--shard {text!r}: expected I/K with 0 <= I < K, e.g. 0/4") from None


def shard_file(cache: Path, start: int, end: int) -> Path:
    return cache / f"b{start:06d}-{end:06d}.jsonl"


def cached_ranges(cache: Path) -> dict[int, tuple[int, Path]]:
    """``{start: (end, file)}`` of the non-empty shard files in ``cache`` (a half-written file is a hidden temp file
    and never matches; an empty shard — more shards than units — covers nothing and would shadow its neighbour)."""
    done = {}
    for f in sorted(cache.glob("b*-*.jsonl")) if cache.is_dir() else []:
        start, end = (int(x) for x in f.stem[1:].split("-"))
        if end > start:
            done[start] = (end, f)
    return done


def plan_merge(done: dict[int, int], num_units: int) -> list[tuple[int, int, bool]]:
    """How to cover units [0, num_units): ``(start, end, cached)`` runs in order, taking cached ranges (``done``:
    start -> end) where one starts where the previous run ended and filling each gap up to the next usable cached
    range (or the end) with one computed run."""
    runs, b = [], 0
    while b < num_units:
        if b in done and done[b] > b:
            runs.append((b, done[b], True))
            b = done[b]
            continue
        nxt = min((s for s in done if s > b and done[s] > s), default=num_units)
        runs.append((b, min(nxt, num_units), False))
        b = min(nxt, num_units)
    return runs
