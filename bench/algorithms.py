"""One round of each algorithm from the same SFT policy and reward model: the README's table of algorithms (mean
held-out gold reward, gold win-rate vs SFT, exact KL to SFT, proxy reward, wall time, and for the online ones the
generation / reward / update split of their time).

Runs in a scratch copy of a finished embedded pipeline (default: this repo after `make demo`), so the repo's own
outputs are untouched. Rounds, all with ``prev: sft``: DPO with each TRL loss_type exposed in params (sigmoid,
ipo, hinge = RSO's, robust, and the rest of TRL's family: f-divergences, sppo_hard, nca_pair, apo_zero, discopop, an
MPO-style weighted mix) and conservative DPO (sigmoid with label_smoothing 0.1), RAFT (top-1 per prompt), and
the online algorithms — PPO, REINFORCE++, REINFORCE++-baseline, GRPO, RLOO — each given the same number of generated
samples as a DPO round draws (generate.n x the training prompts), and one REINFORCE++ round on a mixed reward (the
reward model plus the two rule-based rewards). Each round's stages run as the stage modules DVC would call, in
dvc.yaml order (bench/_scratch.py).

    python bench/algorithms.py                          # every row, ~40 min on 2 CPU cores
    python bench/algorithms.py --only grpo rloo         # some rows; the others are kept from the last run
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

N_SAMPLES = 4  # generate.n of the DPO and RAFT rounds: the online rounds get as many samples per training prompt
MIXED_REWARD = {"sources": [{"reward_model": "ensemble", "weight": 1.0},
                            {"function": "alignloop.core.reward_functions:length_window", "weight": 0.5},
                            {"function": "alignloop.core.reward_functions:repetition_penalty", "weight": 0.5}]}


def rounds_for(train_prompts: int) -> dict:
    """Every row's round. The online rounds' iteration (step) counts give them the samples a DPO round draws: 
    N_SAMPLES x train_prompts, in batches of 64 responses (64 prompts x 1 for PPO/REINFORCE++, 16 x 4 for the group
    methods)."""
    it = max(1, round(N_SAMPLES * train_prompts / 64))
    group = {"prompts_per_step": 16, "num_generations": 4, "steps": it}
    ppo = {"iterations": it, "rollout_prompts": 64}
    return {
        "dpo_sigmoid": {"algo": "dpo", "prev": "sft"},
        "dpo_ipo": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": "ipo"}},
        "dpo_hinge": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": "hinge"}},
        "dpo_robust": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": "robust", "label_smoothing": 0.1}},
        "cdpo": {"algo": "dpo", "prev": "sft", "dpo": {"label_smoothing": 0.1}},
        "raft": {"algo": "raft", "prev": "sft"},
        "ppo": {"algo": "ppo", "prev": "sft", "ppo": ppo},
        "reinforce_pp": {"algo": "reinforce_pp", "prev": "sft", "ppo": ppo},
        "reinforce_pp_baseline": {"algo": "reinforce_pp", "prev": "sft",
                                  "ppo": {"iterations": it, "rollout_prompts": 16, "samples_per_prompt": 4,
                                          "baseline": "group_mean"}},
        "grpo": {"algo": "grpo", "prev": "sft", "grpo": group},
        "rloo": {"algo": "rloo", "prev": "sft", "rloo": group},
        # one update per 64 samples (PPO makes 8): the learning rate matters more; measured for the default (5e-4)
        "grpo_lr1em4": {"algo": "grpo", "prev": "sft", "grpo": {**group, "lr": 1e-4}},
        "grpo_lr1em3": {"algo": "grpo", "prev": "sft", "grpo": {**group, "lr": 1e-3}},
        "rloo_lr1em4": {"algo": "rloo", "prev": "sft", "rloo": {**group, "lr": 1e-4}},
        "rloo_lr1em3": {"algo": "rloo", "prev": "sft", "rloo": {**group, "lr": 1e-3}},
        "reinforce_pp_mixed_reward": {"algo": "reinforce_pp", "prev": "sft", "ppo": ppo, "reward": MIXED_REWARD},
        # the rest of TRL's preference-optimisation family, through params only (dpo.loss_type / f_divergence_type)
        "dpo_forward_kl": {"algo": "dpo", "prev": "sft", "dpo": {"f_divergence_type": "forward_kl"}},
        "dpo_js": {"algo": "dpo", "prev": "sft", "dpo": {"f_divergence_type": "js_divergence"}},
        "dpo_alpha": {"algo": "dpo", "prev": "sft", "dpo": {"f_divergence_type": "alpha_divergence",
                                                            "f_alpha_divergence_coef": 0.5}},
        "dpo_sppo_hard": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": "sppo_hard"}},
        "dpo_nca_pair": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": "nca_pair"}},
        "dpo_apo_zero": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": "apo_zero"}},
        "dpo_discopop": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": "discopop"}},
        "dpo_mpo": {"algo": "dpo", "prev": "sft", "dpo": {"loss_type": ["sigmoid", "bco_pair", "sft"],
                                                          "loss_weights": [0.8, 0.2, 1.0]}},
    }


LABELS = {
    "dpo_sigmoid": "DPO, sigmoid (default)", "dpo_ipo": "DPO, IPO", "dpo_hinge": "DPO, hinge (RSO)",
    "dpo_robust": "DPO, robust (ε 0.1)", "cdpo": "conservative DPO (label smoothing 0.1)",
    "raft": "RAFT (top-1 of 4 per prompt)", "ppo": "PPO", "reinforce_pp": "REINFORCE++",
    "reinforce_pp_baseline": "REINFORCE++-baseline (16 prompts × 4)", "grpo": "GRPO (default, lr 5e-4)",
    "grpo_lr1em4": "GRPO, lr 1e-4", "grpo_lr1em3": "GRPO, lr 1e-3", "rloo": "RLOO (default, lr 5e-4)",
    "rloo_lr1em4": "RLOO, lr 1e-4", "rloo_lr1em3": "RLOO, lr 1e-3",
    "reinforce_pp_mixed_reward": "REINFORCE++, reward model + length + repetition rules (0.5 each)",
    "dpo_forward_kl": "DPO, forward KL (f-DPO)", "dpo_js": "DPO, Jensen-Shannon (f-DPO)",
    "dpo_alpha": "DPO, α-divergence α 0.5 (f-DPO)", "dpo_sppo_hard": "sppo_hard (SPPO's hard-label case)",
    "dpo_nca_pair": "NCA (nca_pair)", "dpo_apo_zero": "APO-zero", "dpo_discopop": "DiscoPOP",
    "dpo_mpo": "MPO-style mix: sigmoid 0.8 + bco_pair 0.2 + sft 1.0",
}


def markdown_table(result: dict) -> str:
    """The README's markdown table from a bench/out/algorithms.json result."""
    rows = ["| algorithm (one round from SFT) | gold reward | gold win-rate vs SFT | KL to SFT | proxy reward | samples | "
            "generate / reward / update s | wall time |", "|---|---|---|---|---|---|---|---|"]
    order = ["sft", *LABELS]
    for key, t in sorted(result["table"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        tr = t.get("train", {})
        split = (f"{tr['generate_s']:.1f} / {tr['reward_s']:.1f} / {tr['update_s']:.1f}" if "generate_s" in tr else "")
        rows.append(f"| {LABELS.get(key, 'SFT (baseline)' if key == 'sft' else key)} | {t['gold_reward']:.3f} | "
                    f"{t['win_rate_vs_sft_gold']:.3f} | {t['kl_to_sft']:.2f} | {t['proxy_reward']:.3f} | "
                    f"{tr.get('samples', '') if split else ''} | {split} | {str(t['seconds']) + ' s' if 'seconds' in t else ''} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=REPO)
    ap.add_argument("--only", nargs="*", help="a subset of the rounds")
    ap.add_argument("--table", action="store_true", help="print the README table of the last run and exit")
    a = ap.parse_args()
    if a.table:
        from _out import OUT

        print(markdown_table(json.loads((OUT / "algorithms.json").read_text())))
        return 0
    work, env = scratch_copy(a.project, "alignloop-algos-")
    train_prompts = sum(1 for _ in (work / layout.PROMPTS_TRAIN).open())
    rounds = {k: v for k, v in rounds_for(train_prompts).items() if not a.only or k in a.only}

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
        train = yaml.safe_load((work / layout.train_metrics(r)).read_text())
        table[r]["train"] = {k: train[k] for k in ("samples", "generate_s", "reward_s", "update_s", "iterations",
                                                   "steps", "stopped_early", "train_runtime_s") if k in train}

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
