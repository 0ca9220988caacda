"""One round of each algorithm from the same SFT policy and reward model, at the default params: the README's
table of algorithms (mean held-out gold reward, gold win-rate vs SFT, KL to SFT, proxy reward, wall time).

Runs in a scratch copy of a finished embedded pipeline (default: this repo after `make demo`), so the repo's own
outputs are untouched. Rounds, all with ``prev: sft``: DPO with each TRL loss_type exposed in params (sigmoid,
ipo, hinge = RSO's, robust) and conservative DPO (sigmoid with label_smoothing 0.1), PPO, RAFT (top-1 per prompt).
Each round's stages run as the stage modules DVC would call, in dvc.yaml order (bench/_scratch.py).

    python bench/algorithms.py            # ~20 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _out import write_result  # noqa: E402
from _scratch import run_round, run_stage, scratch_copy, set_params  # noqa: E402
from alignloop.pipeline import layout  # noqa: E402

ROUNDS = {
    "dpo_sigmoid": {"algo": "dpo", "prev": "sft"},
    "dpo_ipo": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": "ipo"}},
    "dpo_hinge": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": "hinge"}},
    "dpo_robust": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": "robust", "label_smoothing": 0.1}},
    "cdpo": {"algo": "dpo", "prev": "sft", "dpo": {"label_smoothing": 0.1}},
    "ppo": {"algo": "ppo", "prev": "sft"},
    "reinforce_pp": {"algo": "reinforce_pp", "prev": "sft"},
    # 16 prompts x 4 responses: the same 64 rollouts per iteration as ppo and reinforce_pp
    "reinforce_pp_baseline": {"algo": "reinforce_pp", "prev": "sft",
                              "ppo": {"rollout_prompts": 16, "samples_per_prompt": 4, "baseline": "group_mean"}},
    "raft": {"algo": "raft", "prev": "sft"},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=REPO)
    ap.add_argument("--only", nargs="*", help="a subset of the rounds")
    a = ap.parse_args()
    rounds = {k: v for k, v in ROUNDS.items() if not a.only or k in a.only}
    work, env = scratch_copy(a.project, "alignloop-algos-")

    def edit(params):
        params["rounds"] = rounds
        params.setdefault("registry", {})["enabled"] = False

    stages = set_params(work, env, edit)
    run_stage(work, env, stages["evaluate_sft"], "evaluate_sft")  # this code version's evaluation of the baseline
    sft = yaml.safe_load((work / layout.eval_paths("sft")[0]).read_text())
    table = {"sft": {k: sft[k] for k in ("gold_reward", "proxy_reward", "kl_to_sft", "win_rate_vs_sft_gold")}}
    for r in rounds:
        t0 = time.perf_counter()
        run_round(work, env, stages, r)
        ev = yaml.safe_load((work / layout.eval_paths(r)[0]).read_text())
        table[r] = {k: ev[k] for k in ("gold_reward", "proxy_reward", "kl_to_sft", "win_rate_vs_sft_gold")}
        table[r]["seconds"] = round(time.perf_counter() - t0)
        print(r, table[r], flush=True)
    if a.only:  # a partial rerun updates the rows it ran and keeps the others
        from _out import OUT

        old = json.loads((OUT / "algorithms.json").read_text()) if (OUT / "algorithms.json").exists() else {}
        rounds, table = {**old.get("rounds", {}), **rounds}, {**old.get("table", {}), **table}
    write_result("algorithms", {"rounds": rounds, "table": table})
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
