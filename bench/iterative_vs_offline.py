"""The loop's central claim on the embedded task: iterative, on-policy DPO beats offline DPO at an equal budget of
preference pairs — tested over several seeds, with a confidence interval on the paired difference between the arms.

For every seed, a fresh embedded pipeline in a scratch directory (params.yaml's settings, `seed` replaced: the
corpus, the split, the models' init and the sampling all change) runs up to SFT and the reward model, then:
  (b) iterative: three DPO rounds, each on best-vs-worst pairs rejection-sampled from the previous policy and
                 scored by the reward model; B = the pairs these three rounds used;
  (a) offline:   one DPO round on the curated (annotator) preference pairs, at most B of them;
  (c) optional (--ensemble N): (b) with an N-member reward-model ensemble, rewards = mean - 1 * std.
Both arms are evaluated on the same held-out prompts with the same evaluation seed, so each prompt gives a paired
difference (iterative - offline) of its mean gold reward and of its gold win-rate against SFT. The estimate is the
mean over seeds of the per-seed mean difference; its 95 % interval is a two-level bootstrap (seeds, then prompts
within a seed: core.metrics.nested_bootstrap_ci), so it carries seed-to-seed variance as well as prompt noise.

    python bench/iterative_vs_offline.py --seeds 0 1 2     # ~8 min per seed on 2 CPU cores (+~4 with --ensemble)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _out import write_result  # noqa: E402
from _scratch import run_round, run_stage, scratch_copy, set_params  # noqa: E402
from alignloop.core import files  # noqa: E402
from alignloop.core.metrics import bootstrap_ci, mean, nested_bootstrap_ci, win_outcomes  # noqa: E402
from alignloop.pipeline import layout  # noqa: E402

KEYS = ("gold_reward", "win_rate_vs_sft_gold", "win_rate_vs_sft_gold_ci", "win_rate_vs_sft_judge", "kl_to_sft",
        "proxy_reward", "proxy_gold_gap")
ITERATIVE = {"i1": {"algo": "dpo", "prev": "sft"}, "i2": {"algo": "dpo", "prev": "i1"},
             "i3": {"algo": "dpo", "prev": "i2"}}
SKIP = ("register_", "report", "llm_judge_")  # not part of the comparison; the registry would also need a store


def by_prompt(work: Path, policy: str) -> dict:
    """{prompt_id: {sample_idx: gold reward}} of a policy's evaluation samples."""
    out: dict = {}
    for r in files.read_jsonl(work / layout.eval_paths(policy)[1], files.validate_sample, id_key=files.SAMPLE_KEY):
        out.setdefault(r["prompt_id"], {})[r["sample_idx"]] = r["gold_reward"]
    return out


def paired(work: Path, a: str, b: str) -> dict[str, list[float]]:
    """Per prompt: mean gold of a minus of b, and gold win-rate vs SFT of a minus of b (same prompts, same seeds)."""
    ga, gb, gs = by_prompt(work, a), by_prompt(work, b), by_prompt(work, "sft")
    if ga.keys() != gb.keys():
        raise SystemExit(f"{a} and {b} were evaluated on different prompts: the difference would not be paired")
    d_gold, d_win, head = [], [], []
    for p in ga:
        idx = sorted(ga[p])
        xa, xb, xs = [ga[p][i] for i in idx], [gb[p][i] for i in idx], [gs[p][i] for i in idx]
        d_gold.append(mean(xa) - mean(xb))
        d_win.append(mean(win_outcomes(xa, xs)) - mean(win_outcomes(xb, xs)))
        head.append(mean(win_outcomes(xa, xb)))  # a vs b directly: 0.5 = no difference
    return {"gold_reward": d_gold, "win_rate_vs_sft_gold": d_win, "head_to_head_gold": head}


def run_seed(seed: int, ensemble: int) -> dict:
    # Only the package and params: everything else (corpus, tokenizer, models) is rebuilt for this seed.
    work, env = scratch_copy(REPO, f"alignloop-iter-s{seed}-", parts=("alignloop", layout.PARAMS))
    read = lambda rel: json.loads((work / rel).read_text())  # noqa: E731
    row = lambda r: {k: read(layout.eval_paths(r)[0]).get(k) for k in KEYS}  # noqa: E731

    def edit_b(p):
        p["seed"] = seed
        p["rounds"] = ITERATIVE
        p.setdefault("registry", {})["enabled"] = False
        p.setdefault("llm_judge", {})["enabled"] = False

    stages = set_params(work, env, edit_b)
    for name, stage in stages.items():  # dvc.yaml order: the stages before the rounds, then i1, i2, i3
        if not name.startswith(SKIP):
            run_stage(work, env, stage, name)
    budget = sum(read(layout.pairs_metrics(r))["pairs"] for r in ITERATIVE)
    arms = {"sft": row("sft"), "b_iterative_3_rounds": {"pairs": budget, **row("i3")}}

    def edit_a(p):
        edit_b(p)
        p["rounds"] = {**ITERATIVE, "off": {"algo": "dpo", "prev": "sft", "dpo": {"pairs": "curated", "max_pairs": budget}}}

    stages = set_params(work, env, edit_a)
    run_round(work, env, stages, "off")
    arms["a_offline_1_round"] = {"pairs": read(layout.train_metrics("off"))["pairs"], **row("off")}
    diffs = paired(work, "i3", "off")

    if ensemble:
        ens = {f"e{i}": {"algo": "dpo", "prev": "sft" if i == 1 else f"e{i - 1}"} for i in (1, 2, 3)}

        def edit_c(p):
            edit_b(p)
            p["rounds"] = ens
            p.setdefault("reward_model", {})["ensemble"] = ensemble
            p.setdefault("score", {}).update({"aggregate": "mean_minus_std", "std_penalty": 1.0})

        stages = set_params(work, env, edit_c)
        run_stage(work, env, stages["reward_model"], "reward_model")
        run_stage(work, env, stages["evaluate_sft"], "evaluate_sft")  # the proxy is the ensemble now
        for r in ens:
            run_round(work, env, stages, r)
        arms[f"c_iterative_ensemble_{ensemble}"] = {"pairs": sum(read(layout.pairs_metrics(r))["pairs"] for r in ens),
                                                    **row("e3")}
    shutil.rmtree(work, ignore_errors=True)
    print(f"seed {seed}:", json.dumps(arms), flush=True)
    return {"seed": seed, "eval_prompts": len(diffs["gold_reward"]), "arms": arms, "diffs": diffs}


def summarise(runs: list[dict], resamples: int) -> dict:
    """The paired difference iterative - offline per seed (prompt bootstrap) and over seeds (nested bootstrap)."""
    out: dict = {}
    for metric, null in (("gold_reward", 0.0), ("win_rate_vs_sft_gold", 0.0), ("head_to_head_gold", 0.5)):
        units = [r["diffs"][metric] for r in runs]
        est, lo, hi = nested_bootstrap_ci(units, resamples=resamples, seed=0)
        out[metric] = {
            "per_seed": [{"seed": r["seed"], "estimate": mean(u), "ci": bootstrap_ci(u, resamples=resamples, seed=0)}
                         for r, u in zip(runs, units)],
            "estimate": est, "ci": [lo, hi], "null": null,
            "seeds_favouring_iterative": sum(mean(u) > null for u in units),
            "verdict": ("iterative beats offline" if lo > null else "offline beats iterative" if hi < null
                        else "no significant difference"),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ensemble", type=int, default=0, help="also run arm (c) with this many reward models (0: skip)")
    ap.add_argument("--resamples", type=int, default=4000)
    a = ap.parse_args()
    runs = [run_seed(s, a.ensemble) for s in a.seeds]
    result = {"seeds": a.seeds, "runs": runs, "difference_iterative_minus_offline": summarise(runs, a.resamples)}
    write_result("iterative_vs_offline", result)
    for metric, s in result["difference_iterative_minus_offline"].items():
        print(f"{metric}: {s['estimate']:+.3f} [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}] (null {s['null']}) over "
              f"{len(runs)} seeds, {s['seeds_favouring_iterative']} favour iterative: {s['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
