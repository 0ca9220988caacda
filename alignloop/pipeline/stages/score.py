"""Stage `score`: the round's reward of each of its samples.

The reward is the round's ``reward`` section (alignloop.ml.rewards.RoundReward): by default the reward model, or with
a reward-model ensemble (reward_model.ensemble = k > 1) every member's score combined by score.aggregate, with
``member_rewards`` keeping the k raw scores (for disagreement analysis). With other sources (one ensemble member,
Python reward functions ``module:function``, weights, maxmin) each row also keeps ``source_rewards``, every source's
raw value; reward functions get the prompt's ``meta`` from the curated training prompts.

Shards, as in generate: ``--shard I/K`` scores only the I-th of K contiguous runs of blocks (BLOCK_BATCHES batches
of samples each) into ``.alignloop/shards/score_<round>/<fingerprint>/``; the DVC stage merges the shards that
match its exact inputs and scores any blocks missing. Batches are length-sorted within a block only, so a block is
scored in the same batches wherever it runs and the merged scores equal one process's bit for bit (a score's last
bits depend on the padding of its batch). Scored runs are cached as they finish, so a killed stage resumes. A shard
holds the sources' raw values; they are combined after the merge, over all rows (maxmin normalises each source over
the whole round), so the scores never depend on the sharding.
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
from alignloop.pipeline.lineage import reward_deps, reward_modules
from alignloop.pipeline.specs import StageSpec, code_paths
from alignloop.pipeline.tracking import stage_run

SHARD_ROOT = Path(layout.SHARD_ROOT)
BLOCK_BATCHES = 8  # a block: small enough to balance shards, large enough that length-sorting still saves padding

SPECS = [StageSpec(
    name="score", module="alignloop.pipeline.stages.score", scope="round", order=1,
    help="the round's reward of every sample (reward model(s), ensemble combined, and reward functions)",
    code=("alignloop.ml.inference", "alignloop.ml.modeling", "alignloop.ml.rewards", "alignloop.core.rewards",
          "alignloop.core.ensemble", "alignloop.core.metrics", "alignloop.core.shards", "alignloop.pipeline.lineage"),
    params=("model", "reward_model.ensemble"), round_params=("score", "reward"),
    # The prompts' meta is read only when a reward function takes it.
    deps=lambda c: [*reward_deps(c.params, c.round), layout.samples(c.round),
                    *([layout.PROMPTS_TRAIN] if reward_modules(c.params, c.round) else [])],
    outs=lambda c: [layout.scores(c.round)],
    extra_code=lambda c: reward_modules(c.params, c.round),  # editing a reward function's module rescores
    applies=lambda c: c.rejection_sampled, gpu=True,
)]


def fingerprint(inputs: list[str], settings: dict, code: list[Path]) -> str:
    """Content hash of everything the scores depend on (samples, reward models, settings, the spec's code)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    files.hash_paths([Path(p) for p in inputs] + list(code), h, layout.HASH_CACHE)
    return h.hexdigest()[:16]


def _validate_shard_row(row: dict) -> str | None:
    """A row of a score shard: the sample's key and each source's raw value (combined after the merge)."""
    for key, typ in (("prompt_id", (str, int)), ("sample_idx", int), ("source_rewards", dict)):
        if not isinstance(row.get(key), typ) or isinstance(row.get(key), bool):
            return f"field '{key}' missing or of the wrong type (fix: delete the shard cache {SHARD_ROOT})"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row["source_rewards"].values()):
        return f"a value of 'source_rewards' is not a number (fix: delete the shard cache {SHARD_ROOT})"
    return None


def _prompt_meta(samples: list[dict], r: str) -> list[dict]:
    """Each sample's prompt ``meta`` (an empty dict when the prompt has none), from the curated training prompts."""
    meta = {p["id"]: p.get("meta") or {} for p in files.read_jsonl(layout.PROMPTS_TRAIN, files.validate_prompt,
                                                                    id_key="id")}
    missing = sorted({str(x["prompt_id"]) for x in samples if x["prompt_id"] not in meta})
    if missing:
        raise files.DataError(f"{layout.samples(r)}: prompt_id(s) {missing[:5]} are not in {layout.PROMPTS_TRAIN}, "
                              "so the reward functions get no meta for them (fix: rerun generate on the current prompts, "
                              "`dvc repro`)")
    return [meta[x["prompt_id"]] for x in samples]


def run(params, args) -> None:
    from alignloop.pipeline.lineage import round_reward

    r = args.round
    s = params.round_section(r, "score")
    cfg = params.round_section(r, "reward")
    reward = round_reward(params, r)  # imports every reward function: a bad name fails here, before any work
    samples = files.read_jsonl(layout.samples(r), files.validate_sample, id_key=files.SAMPLE_KEY)
    meta = _prompt_meta(samples, r) if reward.function_modules else None
    inputs = [*reward.model_dirs, layout.samples(r), *([layout.PROMPTS_TRAIN] if meta is not None else [])]
    settings = {"score": s.model_dump(), "model": params.model.model_dump(),
                "ensemble": params.reward_model.ensemble, "reward": cfg.model_dump()}
    cache = SHARD_ROOT / f"score_{r}" / fingerprint(inputs, settings, code_paths(SPECS[0], params, r))
    block = s.batch_size * BLOCK_BATCHES
    num_blocks = -(-len(samples) // block)

    def score_blocks(start: int, end: int) -> list[dict]:
        """The raw value of every source for the samples of blocks start..end (not yet combined)."""
        lo, hi = start * block, end * block
        part = samples[lo:hi]
        values = reward.sources([x["prompt"] for x in part], [x["response"] for x in part],
                                None if meta is None else meta[lo:hi], group=block,
                                desc=f"score {r} blocks {start}-{end}")
        rows = [{"prompt_id": x["prompt_id"], "sample_idx": x["sample_idx"],
                 "source_rewards": {label: values[label][i] for label in reward.labels}} for i, x in enumerate(part)]
        if reward.member_rewards:  # the ensemble's members, each kept (k > 1)
            for i, row in enumerate(rows):
                row["member_rewards"] = [m[i] for m in reward.member_rewards]
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
    raw, merged = [], 0
    for start, end, cached in plan_merge({a: e for a, (e, _) in done.items()}, num_blocks):
        if cached:
            raw += files.read_jsonl(done[start][1], _validate_shard_row, id_key=files.SAMPLE_KEY, allow_empty=True)
            merged += 1
        else:  # one call per gap: the reward loads each reward model once for it
            part = score_blocks(start, end)
            files.write_jsonl(shard_file(cache, start, end), part)
            raw += part
    # Combined over all rows at once: maxmin's normalisation is over the whole round, whatever the sharding.
    combined = reward.combine({label: [x["source_rewards"][label] for x in raw] for label in reward.labels})
    rows = []
    for x, rw in zip(raw, combined):
        row = {"prompt_id": x["prompt_id"], "sample_idx": x["sample_idx"], "reward": rw}
        if "member_rewards" in x:
            row["member_rewards"] = x["member_rewards"]
        if not reward.is_default:  # the default reward is the reward model's score alone: rows as they always were
            row["source_rewards"] = x["source_rewards"]
        rows.append(row)
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
    if not reward.is_default:
        for label in reward.labels:
            metrics[f"source_{label}_mean"] = mean([x["source_rewards"][label] for x in rows])
    how = f" (merged {merged} precomputed shard(s))" if merged else ""
    print(f"score {r}: {len(rows)} samples, mean reward {metrics['reward_mean']:.3f}{how} -> {out}")
    logged = {"score": s.model_dump(), **({} if reward.is_default else {"reward": cfg.model_dump()})}
    with stage_run(params.experiment, "score", logged, r) as run:
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
