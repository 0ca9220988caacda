"""The loop's central claim on the embedded task: iterative, on-policy DPO beats offline DPO at an equal budget of
preference pairs. Writes the README's experiment table: gold reward, gold win-rate vs SFT (95 % bootstrap interval),
KL to SFT and the proxy-minus-gold gap.

Arms, all from the same SFT policy, in a scratch copy of a finished embedded pipeline (default: this repo after
`make demo`; bench/_scratch.py):
  (a) offline:   one DPO round on the curated (annotator) preference pairs, at most B of them;
  (b) iterative: three DPO rounds, each on best-vs-worst pairs rejection-sampled from the previous policy and
                 scored by the reward model; B = the pairs these three rounds used;
  (c) ensemble:  (b) with a 3-member reward-model ensemble, rewards = mean - 1 * std (conservative).
Every other setting is params.yaml's.

    python bench/iterative_vs_offline.py        # ~35 min on 2 CPU cores (the ensemble trains 3 reward models)
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
from alignloop.pipeline import layout  # noqa: E402

KEYS = ("gold_reward", "win_rate_vs_sft_gold", "win_rate_vs_sft_gold_ci", "kl_to_sft", "proxy_reward",
        "proxy_gold_gap")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=REPO)
    ap.add_argument("--ensemble", type=int, default=3)
    a = ap.parse_args()
    work, env = scratch_copy(a.project, "alignloop-iter-")
    read = lambda rel: json.loads((work / rel).read_text())  # noqa: E731
    table: dict = {}

    def record(arm: str, r: str, pairs: int) -> None:
        table[arm] = {"pairs": pairs, **{k: read(layout.eval_paths(r)[0])[k] for k in KEYS}}
        print(arm, table[arm], flush=True)

    # (b) iterative
    iterative = {"i1": {"algo": "dpo", "prev": "sft"}, "i2": {"algo": "dpo", "prev": "i1"},
                 "i3": {"algo": "dpo", "prev": "i2"}}

    def edit_b(p):
        p["rounds"] = iterative
        p.setdefault("registry", {})["enabled"] = False

    stages = set_params(work, env, edit_b)
    run_stage(work, env, stages["evaluate_sft"], "evaluate_sft")
    table["sft"] = {k: read(layout.eval_paths("sft")[0]).get(k) for k in KEYS}
    for r in iterative:
        run_round(work, env, stages, r)
    budget = sum(read(layout.pairs_metrics(r))["pairs"] for r in iterative)
    record("b_iterative_3_rounds", "i3", budget)

    # (a) offline at the same budget
    def edit_a(p):
        p["rounds"] = {**iterative, "off": {"algo": "dpo", "prev": "sft", "dpo": {"pairs": "curated", "max_pairs": budget}}}

    stages = set_params(work, env, edit_a)
    run_round(work, env, stages, "off")
    record("a_offline_1_round", "off", min(budget, read(layout.train_metrics("off"))["pairs"]))

    # (c) iterative with a reward-model ensemble
    ens = {f"e{i}": {"algo": "dpo", "prev": "sft" if i == 1 else f"e{i - 1}"} for i in (1, 2, 3)}

    def edit_c(p):
        p["rounds"] = ens
        p.setdefault("reward_model", {})["ensemble"] = a.ensemble
        p.setdefault("score", {}).update({"aggregate": "mean_minus_std", "std_penalty": 1.0})

    stages = set_params(work, env, edit_c)
    run_stage(work, env, stages["reward_model"], "reward_model")
    run_stage(work, env, stages["evaluate_sft"], "evaluate_sft")  # proxy = the ensemble now
    table["sft_ensemble_proxy"] = {k: read(layout.eval_paths("sft")[0]).get(k) for k in KEYS}
    for r in ens:
        run_round(work, env, stages, r)
    record(f"c_iterative_ensemble_{a.ensemble}", "e3",
           sum(read(layout.pairs_metrics(r))["pairs"] for r in ens))
    write_result("iterative_vs_offline", {"budget_pairs": budget, "table": table})
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
