"""Does a per-prompt sample budget yield more usable pairs than a uniform n at the same total?

On a finished embedded pipeline (default: this repo after `make demo`): draws ``--n-max`` samples per training
prompt from the policy round ``--round`` starts from, scores them with the reward model, then compares
  uniform:  the first n samples of every prompt (total n * P),
  budget_variance:  the first a_i samples of prompt i, a = allocate(variance of prompt i's rewards in the
            previous round, total n * P, min_n, n_max)  (alignloop.budget),
  budget_expected_range:  a = allocate_expected_range(std of those rewards, ...): greedy on expected margin gain,
by the share of prompts whose best-vs-worst margin reaches each threshold. The first k of n i.i.d. samples are
k i.i.d. samples, so one draw of n_max serves both arms.

    python bench/budget_pairs.py --round r2 --n 4 --n-max 8
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def margins(groups: dict, counts: dict) -> dict:
    from alignloop.pairs import max_min_pair

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
    a = ap.parse_args()
    import os

    os.chdir(a.project)
    from alignloop import io
    from alignloop.budget import allocate, allocate_expected_range, reward_variance
    from alignloop.config import load_params
    from alignloop.inference import reward_scores, sample
    from alignloop.lineage import start_policy
    from alignloop.modeling import load_causal_lm, load_reward_model, load_tokenizer, set_threads

    set_threads()
    params = load_params("params.yaml")
    prev = params.rounds[a.round].prev
    prev_scores = io.read_jsonl(f"data/rounds/{prev}/scores.jsonl")
    by_prompt = defaultdict(list)
    for row in prev_scores:
        by_prompt[row["prompt_id"]].append(row["reward"])
    prompts = io.read_jsonl("data/curated/prompts/train.jsonl", io.validate_prompt, id_key="id")
    policy = start_policy(params, a.round)
    tok, model = load_tokenizer(policy, params.model), load_causal_lm(policy, params.model)
    g = params.round_section(a.round, "generate")
    rows = sample(model, tok, [(p["id"], p["prompt"]) for p in prompts], n=a.n_max, max_new_tokens=g.max_new_tokens,
                  temperature=g.temperature, top_p=g.top_p, batch_size=g.batch_size, seed=a.seed,
                  max_prompt_tokens=params.model.max_length - g.max_new_tokens, desc="budget bench")
    rm = load_reward_model("data/models/rm", params.model)
    rewards = reward_scores(rm, load_tokenizer("data/models/rm", params.model), [r["prompt"] for r in rows],
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
    result = {"round": a.round, "prompts": len(pids), "total_samples": total, "n": a.n, "n_max": a.n_max,
              "min_n": a.min_n, "seed": a.seed, "arms": {}}
    for arm, counts in arms.items():
        m = margins(groups, counts)
        result["arms"][arm] = {
            "samples": sum(counts.values()),
            **{f"share_margin_ge_{t}": sum(v >= t for v in m.values()) / len(m) for t in (0.1, 0.5, 1.0, 2.0)},
            "mean_margin": sum(m.values()) / len(m),
        }
    out = REPO / "bench" / "out" / "budget_pairs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
