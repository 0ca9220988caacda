"""Stage `score`: reward-model scores of a round's samples.

With a reward-model ensemble (reward_model.ensemble = k > 1) every member scores every sample; ``reward`` is their
combination by score.aggregate and ``member_rewards`` keeps the k raw scores (for disagreement analysis).

Shards, as in generate: ``--shard I/K`` scores only the I-th of K contiguous runs of blocks (BLOCK_BATCHES batches
of samples each) into ``.alignloop/shards/score_<round>/<fingerprint>/``; the DVC stage merges the shards that
match its exact inputs and scores any blocks missing. Batches are length-sorted within a block only, so a block is
scored in the same batches wherever it runs and the merged scores equal one process's bit for bit (a score's last
bits depend on the padding of its batch). Scored runs are cached as they finish, so a killed stage resumes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from alignloop.core import files
from alignloop.core.ensemble import aggregate
from alignloop.core.metrics import mean
from alignloop.core.shards import cached_ranges, parse_shard, plan_merge, shard_file, shard_range
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import reward_model_dirs
from alignloop.pipeline.specs import StageSpec, code_paths
from alignloop.pipeline.tracking import stage_run

SHARD_ROOT = Path(layout.SHARD_ROOT)
BLOCK_BATCHES = 8  # a block: small enough to balance shards, large enough that length-sorting still saves padding

SPECS = [StageSpec(
    name="score", module="alignloop.pipeline.stages.score", scope="round", order=1, help="reward-model score of every sample (ensemble combined)",
    code=("alignloop.ml.inference", "alignloop.ml.modeling", "alignloop.core.ensemble", "alignloop.core.metrics",
          "alignloop.core.shards", "alignloop.pipeline.lineage"),
    params=("model", "reward_model.ensemble"), round_params=("score",),
    deps=lambda c: [*reward_model_dirs(c.params), layout.samples(c.round)],
    outs=lambda c: [layout.scores(c.round)],
    applies=lambda c: c.rejection_sampled, gpu=True,
)]


def fingerprint(inputs: list[str], settings: dict, code: list[Path]) -> str:
    """Content hash of everything the scores depend on (samples, reward models, settings, the spec's code)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    files.hash_paths([Path(p) for p in inputs] + list(code), h, layout.HASH_CACHE)
    return h.hexdigest()[:16]


def run(params, args) -> None:
    from alignloop.ml.inference import RewardEnsemble

    r = args.round
    s = params.round_section(r, "score")
    samples = files.read_jsonl(layout.samples(r), files.validate_sample, id_key=files.SAMPLE_KEY)
    rms = reward_model_dirs(params)
    settings = {"score": s.model_dump(), "model": params.model.model_dump(),
                "ensemble": params.reward_model.ensemble}
    cache = SHARD_ROOT / f"score_{r}" / fingerprint([*rms, layout.samples(r)], settings, code_paths(SPECS[0], params, r))
    block = s.batch_size * BLOCK_BATCHES
    num_blocks = -(-len(samples) // block)
    ensemble = RewardEnsemble.from_params(rms, params, s)

    def score_blocks(start: int, end: int) -> list[dict]:
        part = samples[start * block: end * block]
        rewards, members = ensemble([x["prompt"] for x in part], [x["response"] for x in part], group=block,
                                    desc=f"score {r} blocks {start}-{end}")
        rows = [{"prompt_id": x["prompt_id"], "sample_idx": x["sample_idx"], "reward": rw} for x, rw in zip(part, rewards)]
        if len(members) > 1:
            for i, row in enumerate(rows):
                row["member_rewards"] = [m[i] for m in members]
        return rows

    if args.shard:
        i, k = parse_shard(args.shard)
        start, end = shard_range(num_blocks, i, k)
        path = shard_file(cache, start, end)
        if not path.exists():
            files.write_jsonl(path, score_blocks(start, end) if end > start else [])
        print(f"score {r} shard {i}/{k}: blocks {start}-{end} -> {path}")
        return

    done = cached_ranges(cache)
    rows, merged = [], 0
    for start, end, cached in plan_merge({a: e for a, (e, _) in done.items()}, num_blocks):
        if cached:
            rows += files.read_jsonl(done[start][1], files.validate_score, id_key=files.SAMPLE_KEY, allow_empty=True)
            merged += 1
        else:  # one call per gap: the ensemble loads each member once for it
            part = score_blocks(start, end)
            files.write_jsonl(shard_file(cache, start, end), part)
            rows += part
    out = layout.scores(r)
    files.write_jsonl(out, rows)
    shutil.rmtree(SHARD_ROOT / f"score_{r}", ignore_errors=True)  # merged or stale: either way no longer needed
    rewards = [x["reward"] for x in rows]
    metrics = {"samples": len(rows), "reward_mean": mean(rewards), "reward_max": max(rewards), "reward_min": min(rewards),
               "merged_shards": merged}
    if "member_rewards" in rows[0]:  # how much the members disagree: mean over samples of their std (= mean - (mean - 1 * std))
        members = [list(m) for m in zip(*(x["member_rewards"] for x in rows))]
        stds = [a - b for a, b in zip(aggregate(members, "mean"), aggregate(members, "mean_minus_std", 1.0))]
        metrics["member_std_mean"] = mean(stds)
    how = f" (merged {merged} precomputed shard(s))" if merged else ""
    print(f"score {r}: {len(rows)} samples, mean reward {metrics['reward_mean']:.3f}{how} -> {out}")
    with stage_run(params.experiment, "score", {"score": s.model_dump()}, r) as run:
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

    # A shard worker opens no MLflow run: the stage's run is the one that merges the shards.
    return stage_main(SPECS[0], body, argv=rest, track=known.shard is None)


if __name__ == "__main__":
    sys.exit(main())
