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

from alignloop.core import files
from alignloop.core.shards import cached_ranges, parse_shard, shard_file, shard_range
from alignloop.core.seeds import round_seed
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import reward_deps, reward_modules, start_deps
from alignloop.pipeline.specs import Ctx, StageSpec, code_paths

PROMPTS = layout.PROMPTS_TRAIN
SHARD_ROOT = Path(layout.SHARD_ROOT)


def _budget_deps(ctx: Ctx) -> list[str]:
    """The adaptive budget scores as it draws with the round's reward (its reward models are inputs); prev_variance
    reads prev's scores."""
    budget, prev = ctx.section("generate").budget.strategy, ctx.rnd.prev
    if budget == "adaptive":
        return reward_deps(ctx.params, ctx.round)
    if budget == "prev_variance" and prev != "sft" and Ctx(ctx.params, prev).rejection_sampled:
        return [layout.scores(prev)]
    return []


def _scores_as_it_draws(ctx: Ctx) -> bool:
    return ctx.section("generate").budget.strategy == "adaptive"


SPECS = [StageSpec(
    name="generate", module="alignloop.pipeline.stages.generate", scope="round", order=0,
    help="n samples per training prompt from the round's start policy (HF or vLLM backend, sample budgets)",
    code=("alignloop.ml.backends", "alignloop.ml.inference", "alignloop.ml.modeling", "alignloop.core.budget",
          "alignloop.core.seeds", "alignloop.core.shards", "alignloop.pipeline.lineage"),
    extra_code=lambda c: (["alignloop.core.ensemble", "alignloop.ml.rewards", "alignloop.core.rewards",
                           *reward_modules(c.params, c.round)] if _scores_as_it_draws(c) else []),
    params=("seed", "model"), round_params=("prev", "start", "generate"),
    extra_params=lambda c: (["reward_model.ensemble", f"rounds.{c.round}.score", f"rounds.{c.round}.reward"]
                            if _scores_as_it_draws(c) else []),
    deps=lambda c: [*_budget_deps(c), *start_deps(c.params, c.round), PROMPTS],
    outs=lambda c: [layout.samples(c.round)],
    applies=lambda c: c.samples_drawn, gpu=True,
)]


def fingerprint(policy: str, settings: dict, code: list[Path]) -> str:
    """Content hash of everything the samples depend on (the spec's code list: the same files DVC tracks)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    files.hash_paths([Path(policy), Path(PROMPTS)] + list(code), h, layout.HASH_CACHE)
    return h.hexdigest()[:16]


def run(params, args) -> None:
    from alignloop.ml.backends import load_backend, resolve, spec_from
    from alignloop.ml.inference import check_prompt_lengths
    from alignloop.pipeline.lineage import start_policy
    from alignloop.ml.modeling import load_tokenizer
    from alignloop.pipeline.tracking import stage_run

    r = args.round
    g = params.round_section(r, "generate")
    policy = start_policy(params, r)
    prompts = files.read_jsonl(PROMPTS, files.validate_prompt, id_key="id")[: g.max_prompts]
    seed = round_seed(params.seed, r)
    max_prompt_tokens = params.model.max_length - g.max_new_tokens
    check_prompt_lengths(PROMPTS, prompts, load_tokenizer(policy, params.model), max_prompt_tokens,
                         f"model.max_length {params.model.max_length} - generate.max_new_tokens {g.max_new_tokens}")
    backend_kind = resolve(g.backend)
    settings = {"generate": g.model_dump(), "seed": seed, "max_prompt_tokens": max_prompt_tokens,
                "model": params.model.model_dump(), "backend": backend_kind}
    cache = SHARD_ROOT / r / fingerprint(policy, settings, code_paths(SPECS[0], params, r))
    num_batches = -(-len(prompts) // g.batch_size)
    backend = None

    def get_backend():
        nonlocal backend
        if backend is None:
            backend = load_backend(backend_kind, policy, params.model, tensor_parallel_size=g.tensor_parallel_size,
                                   gpu_memory_utilization=g.gpu_memory_utilization)
        return backend

    def batches(start: int, end: int) -> list[dict]:
        # Seeds follow the global batch index (batch b samples with seed + b), so a shard matches the same batches
        # of a single run.
        return get_backend().sample([(p["id"], p["prompt"]) for p in prompts[start * g.batch_size: end * g.batch_size]],
                                    spec_from(g, seed=seed + start, max_prompt_tokens=max_prompt_tokens),
                                    desc=f"generate {r} batches {start}-{end}")

    if args.shard:
        if g.budget.strategy != "uniform":
            print(f"generate {r} shard {args.shard}: budget '{g.budget.strategy}' is decided over all prompts at "
                  "once; the stage itself computes every sample")
            return
        i, k = parse_shard(args.shard)
        start, end = shard_range(num_batches, i, k)
        path = shard_file(cache, start, end)
        if not path.exists():
            files.write_jsonl(path, batches(start, end) if end > start else [])
        print(f"generate {r} shard {i}/{k}: batches {start}-{end} -> {path}")
        return

    t0 = time.perf_counter()
    merged = 0
    extra: dict = {}
    if g.budget.strategy == "uniform":
        rows, merged = _uniform(cache, num_batches, batches)
    elif g.budget.strategy == "prev_variance":
        rows, extra = _prev_variance(params, r, g, prompts, get_backend, seed, max_prompt_tokens)
    else:
        rows, extra = _adaptive(params, r, g, prompts, get_backend, seed, max_prompt_tokens)
    seconds = time.perf_counter() - t0
    out = layout.samples(r)
    files.write_jsonl(out, rows)
    shutil.rmtree(SHARD_ROOT / r, ignore_errors=True)  # merged or stale: either way no longer needed
    tokens = sum(x["num_tokens"] for x in rows)
    metrics = {"prompts": len(prompts), "samples": len(rows), "output_tokens": tokens,
               "seconds": seconds, "merged_shards": merged,
               "stop_fraction": sum(x["finish_reason"] == "stop" for x in rows) / len(rows), **extra}
    if not merged:  # throughput means something only when this process generated everything
        metrics["tokens_per_s"] = tokens / seconds
    how = f"merged {merged} precomputed shard(s)" if merged else f"at {metrics['tokens_per_s']:.0f} tokens/s"
    print(f"generate {r}: {len(rows)} samples from {policy} ({backend_kind}, budget {g.budget.strategy}), {how} -> {out}")
    with stage_run(params.experiment, "generate", {"generate": g.model_dump(), "prev": params.rounds[r].prev,
                                                    "backend": backend_kind}, r) as run:
        run.log_metrics(metrics)


def _uniform(cache: Path, num_batches: int, batches) -> tuple[list[dict], int]:
    """n per prompt: merge the cached shards that match, compute the missing batches one at a time.

    Each computed batch is written (atomically) into the shard cache before the next starts, so a killed stage
    resumes at the first missing batch: the rerun merges what is there and computes the rest. The shard files'
    names are their batch ranges; a half-written file is a hidden temp file and never matches the glob.
    """
    done = cached_ranges(cache)
    rows: list[dict] = []
    b, merged = 0, 0
    while b < num_batches:
        if b in done:
            end, f = done[b]
            rows += files.read_jsonl(f, files.validate_sample, id_key=files.SAMPLE_KEY, allow_empty=True)
            merged += 1
        else:
            end = b + 1
            batch = batches(b, end)
            files.write_jsonl(shard_file(cache, b, end), batch)
            rows += batch
        b = end
    return rows, merged


# Budgeted draws sample groups of prompts in several calls: wave w, group of prompts getting n more, batch b uses
# seed + w * WAVE_SEED_STRIDE + n * GROUP_SEED_STRIDE + b, so no two calls share a seed (n <= 10 and far fewer than
# 10,000 batches per call).
WAVE_SEED_STRIDE = 1_000_000
GROUP_SEED_STRIDE = 10_000


def _ordered(rows: list[dict], prompts: list[dict]) -> list[dict]:
    order = {p["id"]: i for i, p in enumerate(prompts)}
    return sorted(rows, key=lambda x: (order[x["prompt_id"]], x["sample_idx"]))


def _draw(get_backend, g, prompts: list[dict], counts: list[int], want: list[int], seed: int,
          max_prompt_tokens: int, desc: str) -> list[dict]:
    """``want[i]`` more samples for prompt i (sample_idx continuing from ``counts[i]``), one call per distinct
    amount so each call keeps the backend's n-per-prompt batching."""
    from alignloop.ml.backends import spec_from

    rows = []
    for n in sorted({w for w in want if w > 0}):
        group = [i for i, w in enumerate(want) if w == n]
        rows += get_backend().sample(
            [(prompts[i]["id"], prompts[i]["prompt"]) for i in group],
            spec_from(g, seed=seed + n * GROUP_SEED_STRIDE, max_prompt_tokens=max_prompt_tokens, n=n),
            first_idx={prompts[i]["id"]: counts[i] for i in group}, desc=f"{desc} n={n}")
    return rows


def _prev_variance(params, r, g, prompts, get_backend, seed, max_prompt_tokens) -> tuple[list[dict], dict]:
    """Samples per prompt from the spread of its rewards in the previous round (alignloop.core.budget: expected-range
    greedy). With no previous rewards (the first round, or a PPO round before) it draws uniformly."""
    from collections import defaultdict

    from alignloop.core.budget import allocate_expected_range, reward_variance

    b = g.budget
    total = g.n * len(prompts)
    prev = params.rounds[r].prev
    by_prompt: dict = defaultdict(list)
    # Online rounds (ppo, grpo, ...) sample inside their training stage and offline DPO samples nothing: no scores
    if prev != "sft" and Ctx(params, prev).rejection_sampled:
        for row in files.read_jsonl(layout.scores(prev), files.validate_score, id_key=files.SAMPLE_KEY):
            by_prompt[row["prompt_id"]].append(row["reward"])
    if by_prompt:
        want = allocate_expected_range([reward_variance(by_prompt.get(p["id"], [])) ** 0.5 for p in prompts], total,
                                       min_n=b.min_n, max_n=b.max_n)
    else:
        want = [g.n] * len(prompts)
    rows = _draw(get_backend, g, prompts, [0] * len(prompts), want, seed, max_prompt_tokens, f"generate {r}")
    return _ordered(rows, prompts), {"budget_total": total, "budget_max_per_prompt": max(want),
                                     "budget_min_per_prompt": min(want)}


def _adaptive(params, r, g, prompts, get_backend, seed, max_prompt_tokens) -> tuple[list[dict], dict]:
    """min_n per prompt, then waves of `step` more to prompts without a usable pair yet (alignloop.core.budget.next_wave),
    scored by the round's reward as the score stage will score them (maxmin normalises over each wave here, over the
    round there), until the budget is spent."""
    from alignloop.core.budget import next_wave
    from alignloop.pipeline.lineage import round_reward

    b = g.budget
    total = g.n * len(prompts)
    if total < b.min_n * len(prompts):
        raise files.DataError(f"params.yaml: generate.n={g.n} is below budget.min_n={b.min_n} (fix: raise generate.n or "
                           "lower generate.budget.min_n)")
    rows: list[dict] = []
    rewards: list[list[float]] = [[] for _ in prompts]
    index = {p["id"]: i for i, p in enumerate(prompts)}
    score = round_reward(params, r, keep_loaded=True)  # reward models loaded once; reward functions imported first
    meta = {p["id"]: p.get("meta") or {} for p in prompts}
    want, wave = [b.min_n] * len(prompts), 0
    while any(want):
        new = _draw(get_backend, g, prompts, [len(x) for x in rewards], want, seed + wave * WAVE_SEED_STRIDE,
                    max_prompt_tokens, f"generate {r} wave {wave}")
        scores = score([x["prompt"] for x in new], [x["response"] for x in new], [meta[x["prompt_id"]] for x in new],
                       progress=True)
        for x, sc in zip(new, scores):  # a prompt's new rows come in sample_idx order
            rewards[index[x["prompt_id"]]].append(sc)
        rows += new
        wave += 1
        want = next_wave(rewards, total - len(rows), target_margin=b.target_margin, max_n=b.max_n, step=b.step)
    usable = sum(len(x) >= 2 and max(x) - min(x) >= b.target_margin for x in rewards)
    return _ordered(rows, prompts), {"budget_total": total, "budget_waves": wave,
                                     "budget_usable_share": usable / len(prompts)}


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
