"""Stage `generate`: sample n responses per training prompt from the round's starting policy.

Shards. ``--shard I/K`` computes only the I-th of K contiguous runs of batches and leaves it in a shard cache
(``.alignloop/shards/<round>/<fingerprint>/``) instead of the stage output. The Prefect round flow runs shards
as parallel tasks (one GPU each, or Ray tasks); the DVC stage itself then merges whatever shards match its
exact inputs and computes any that are missing. Batch ``b`` always samples under seed ``seed + b`` with the
same prompts in it, so the merged file is identical to a single-process run, and ``dvc repro`` alone
reproduces it without the cache. The fingerprint covers every input (policy weights, prompts, settings,
code), so a stale shard is never merged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from alignloop import io
from alignloop.stages._cli import stage_main

PROMPTS = "data/curated/prompts/train.jsonl"
SHARD_ROOT = Path(".alignloop/shards")
_CODE = ["alignloop/inference.py", "alignloop/modeling.py", "alignloop/stages/generate.py"]


def _hash_paths(paths: list[Path], h) -> None:
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)


def fingerprint(policy: str, settings: dict) -> str:
    """Content hash of everything the samples depend on."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    root = Path(__file__).resolve().parents[2]
    _hash_paths([Path(policy), Path(PROMPTS)] + [root / c for c in _CODE], h)
    return h.hexdigest()[:16]


def shard_batches(num_batches: int, index: int, count: int) -> tuple[int, int]:
    """Batch range [start, end) of shard ``index`` of ``count``: contiguous, balanced, covering all batches."""
    return num_batches * index // count, num_batches * (index + 1) // count


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, k = (int(x) for x in text.split("/"))
        assert 0 <= i < k
        return i, k
    except (ValueError, AssertionError):
        raise SystemExit(f"--shard {text!r}: expected I/K with 0 <= I < K, e.g. 0/4") from None


def run(params, args) -> None:
    from alignloop.inference import sample
    from alignloop.modeling import load_causal_lm, load_tokenizer
    from alignloop.lineage import start_policy
    from alignloop.tracking import stage_run

    r = args.round
    g = params.round_section(r, "generate")
    policy = start_policy(params, r)
    prompts = io.read_jsonl(PROMPTS, io.validate_prompt, id_key="id")[: g.max_prompts]
    seed = params.seed * 1000 + list(params.rounds).index(r)
    max_prompt_tokens = params.model.max_length - g.max_new_tokens
    settings = {"generate": g.model_dump(), "seed": seed, "max_prompt_tokens": max_prompt_tokens,
                "model": params.model.model_dump()}
    cache = SHARD_ROOT / r / fingerprint(policy, settings)
    num_batches = -(-len(prompts) // g.batch_size)
    model = tokenizer = None

    def batches(start: int, end: int) -> list[dict]:
        nonlocal model, tokenizer
        if model is None:
            tokenizer = load_tokenizer(policy, params.model)
            model = load_causal_lm(policy, params.model)
        # Seeds follow the global batch index (sample() seeds batch b with seed + b), so a shard matches the
        # same batches of a single run.
        return sample(
            model, tokenizer, [(p["id"], p["prompt"]) for p in prompts[start * g.batch_size: end * g.batch_size]],
            n=g.n, max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
            batch_size=g.batch_size, seed=seed + start, max_prompt_tokens=max_prompt_tokens,
            desc=f"generate {r} batches {start}-{end}",
        )

    if args.shard:
        i, k = _parse_shard(args.shard)
        start, end = shard_batches(num_batches, i, k)
        path = cache / f"b{start:06d}-{end:06d}.jsonl"
        if not path.exists():
            io.write_jsonl(path, batches(start, end) if end > start else [])
        print(f"generate {r} shard {i}/{k}: batches {start}-{end} -> {path}")
        return

    t0 = time.perf_counter()
    done: dict[int, tuple[int, Path]] = {}
    for f in sorted(cache.glob("b*-*.jsonl")) if cache.is_dir() else []:
        start, end = (int(x) for x in f.stem[1:].split("-"))
        done[start] = (end, f)
    rows: list[dict] = []
    b, merged = 0, 0
    while b < num_batches:
        if b in done:
            end, f = done[b]
            rows += io.read_jsonl(f, io.validate_sample, allow_empty=True)
            merged += 1
        else:  # compute up to the next cached shard
            end = min([s for s in done if s > b], default=num_batches)
            rows += batches(b, end)
        b = end
    seconds = time.perf_counter() - t0
    out = f"data/rounds/{r}/samples.jsonl"
    io.write_jsonl(out, rows)
    shutil.rmtree(SHARD_ROOT / r, ignore_errors=True)  # merged or stale: either way no longer needed
    tokens = sum(x["num_tokens"] for x in rows)
    metrics = {"prompts": len(prompts), "samples": len(rows), "output_tokens": tokens,
               "seconds": seconds, "merged_shards": merged,
               "stop_fraction": sum(x["finish_reason"] == "stop" for x in rows) / len(rows)}
    if not merged:  # throughput means something only when this process generated everything
        metrics["tokens_per_s"] = tokens / seconds
    how = f"merged {merged} precomputed shard(s)" if merged else f"at {metrics['tokens_per_s']:.0f} tokens/s"
    print(f"generate {r}: {len(rows)} samples from {policy}, {how} -> {out}")
    with stage_run(params.experiment, "generate", {"generate": g.model_dump(), "prev": params.rounds[r].prev}, r) as run:
        run.log_metrics(metrics)


def main(argv=None) -> int:
    import argparse

    # --shard is parsed here and passed through; stage_main owns --params/--round.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--shard", default=None, help="I/K: compute only shard I of K into the shard cache")
    known, rest = pre.parse_known_args(argv if argv is not None else sys.argv[1:])

    def body(params, args):
        args.shard = known.shard
        run(params, args)

    return stage_main("generate", body, needs_round=True, argv=rest)


if __name__ == "__main__":
    sys.exit(main())
