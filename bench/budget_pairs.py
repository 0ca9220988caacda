"""Does a per-prompt sample budget yield more usable pairs than a uniform n at the same total?

On a finished embedded pipeline (default: this repo after `make demo`): draws ``--n-max`` samples per training
prompt from the policy round ``--round`` starts from, scores them with the reward model, then compares
  uniform:  the first n samples of every prompt (total n * P),
  budget_variance:  the first a_i samples of prompt i, a = allocate(variance of prompt i's rewards in the
            previous round, total n * P, min_n, n_max)  (alignloop.core.budget),
  budget_expected_range:  a = allocate_expected_range(std of those rewards, ...): greedy on expected margin gain
            (what generate.budget.strategy prev_variance runs),
  adaptive: min_n per prompt, then one more at a time to prompts whose margin is still below --target
            (alignloop.core.budget.next_wave, what strategy adaptive runs), taken from the same pool in draw order,
by the share of prompts whose best-vs-worst margin reaches each threshold, and the samples each arm used. The first k of n i.i.d. samples are
k i.i.d. samples, so one draw of n_max serves both arms.

    python bench/budget_pairs.py --round r2 --n 4 --n-max 8
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _out import write_result  # noqa: E402
from alignloop.pipeline import layout  # noqa: E402


def margins(groups: dict, counts: dict) -> dict:
    from alignloop.core.pairs import max_min_pair

    out = {}
    for pid, cands in groups.items():
        picked = max_min_pair(cands[: counts[pid]], 0.0)
        out[pid] = 0.0 if picked is None else picked[2] - picked[3]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=REPO)
    ap.add_argument("--round", default="r2", help="the round whose sampling is simulated (its prev gives variances)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--n-max", type=int, default=8)
    ap.add_argument("--min-n", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--target", type=float, default=1.0, help="adaptive: the margin a prompt stops at")
    a = ap.parse_args()
    import os

    os.chdir(a.project)
    from alignloop.core import files
    from alignloop.core.budget import allocate, allocate_expected_range, next_wave, reward_variance
    from alignloop.core.config import load_params
    from alignloop.ml.inference import reward_scores, sample
    from alignloop.pipeline.lineage import start_policy
    from alignloop.ml.modeling import load_causal_lm, load_reward_model, load_tokenizer, set_threads

    set_threads()
    params = load_params("params.yaml")
    prev = params.rounds[a.round].prev
    prev_scores = files.read_jsonl(layout.scores(prev))
    by_prompt = defaultdict(list)
    for row in prev_scores:
        by_prompt[row["prompt_id"]].append(row["reward"])
    prompts = files.read_jsonl(layout.PROMPTS_TRAIN, files.validate_prompt, id_key="id")
    policy = start_policy(params, a.round)
    tok, model = load_tokenizer(policy, params.model), load_causal_lm(policy, params.model)
    g = params.round_section(a.round, "generate")
    rows = sample(model, tok, [(p["id"], p["prompt"]) for p in prompts], n=a.n_max, max_new_tokens=g.max_new_tokens,
                  temperature=g.temperature, top_p=g.top_p, batch_size=g.batch_size, seed=a.seed,
                  max_prompt_tokens=params.model.max_length - g.max_new_tokens, desc="budget bench")
    rm = load_reward_model(layout.RM, params.model)
    rewards = reward_scores(rm, load_tokenizer(layout.RM, params.model), [r["prompt"] for r in rows],
                            [r["response"] for r in rows], batch_size=params.score.batch_size,
                            max_length=params.model.max_length)
    groups = defaultdict(list)
    for r, w in zip(rows, rewards):
        groups[r["prompt_id"]].append((r, w))
    pids = [p["id"] for p in prompts]
    total = a.n * len(pids)
    variances = [reward_variance(by_prompt.get(pid, [])) for pid in pids]
    alloc = allocate(variances, total, min_n=a.min_n, max_n=a.n_max)
    by_range = allocate_expected_range([v ** 0.5 for v in variances], total, min_n=a.min_n, max_n=a.n_max)
    arms = {"uniform": {pid: a.n for pid in pids}, "budget_variance": dict(zip(pids, alloc)),
            "budget_expected_range": dict(zip(pids, by_range))}
    # adaptive: replay the waves on the pre-drawn pools (the k-th draw of a prompt is its k-th i.i.d. sample)
    got = [[w for _, w in groups[pid][: a.min_n]] for pid in pids]
    while True:
        want = next_wave(got, total - sum(map(len, got)), target_margin=a.target, max_n=a.n_max)
        if not any(want):
            break
        got = [g + [w for _, w in groups[pid][len(g): len(g) + k]] for g, pid, k in zip(got, pids, want)]
    arms["adaptive"] = {pid: len(g) for pid, g in zip(pids, got)}
    result = {"round": a.round, "prompts": len(pids), "total_samples": total, "n": a.n, "n_max": a.n_max,
              "min_n": a.min_n, "seed": a.seed, "target": a.target, "arms": {}}
    for arm, counts in arms.items():
        m = margins(groups, counts)
        result["arms"][arm] = {
            "samples": sum(counts.values()),
            **{f"share_margin_ge_{t}": sum(v >= t for v in m.values()) / len(m) for t in (0.5, 1.0, 1.5, 2.0)},
            "mean_margin": sum(m.values()) / len(m),
        }
    write_result("budget_pairs", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
