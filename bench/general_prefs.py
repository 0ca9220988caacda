"""General preferences: iterative DPO on a Bradley-Terry reward model vs SPPO, DNO, INPO (preference model) and LiPO
(listwise, on the reward model's rankings), 3 rounds each, on the default task and on the intransitive one, several
seeds: the README's "General preferences" table.

Each (task, seed) is one fresh DVC project (a copy of alignloop/ and a params.yaml) run by `dvc repro`: the corpus,
SFT, the reward model and the preference model are built once per project, then the five methods each run three
chained rounds from SFT (x1 -> x2 -> x3). Equal samples: every round draws generate.n responses for each training
prompt from its start policy, and every method trains with the same lr / epochs / batch size. Reported per method
and round: gold win-rate vs SFT (the mean of P_gold(policy > SFT) on the intransitive task, wins by the gold reward
on the default one), exact KL to SFT, gold reward, and the models' held-out accuracies; mean over seeds with a 95 %
t-interval (and every seed's value in bench/out/general_prefs.json).

    python bench/general_prefs.py                       # 2 tasks x 3 seeds, two projects at a time (~45 min, 2 cores)
    python bench/general_prefs.py --seeds 0 --tasks intransitive
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _out import write_result  # noqa: E402

INTRANSITIVE = 3.0  # w of the rock-paper-scissors term: sigmoid(3) = 0.95 between styles of equal gold reward
METHODS = {"dpo": "a", "sppo": "s", "dno": "n", "inpo": "i", "lipo": "l"}
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}  # two-sided 95 % t quantiles by degrees of freedom


def params_for(task: str, seed: int) -> dict:
    train = {"lr": 0.0005, "epochs": 2, "batch_size": 16}  # the same for every method
    rounds = {}
    for algo, p in METHODS.items():
        for k in (1, 2, 3):
            rounds[f"{p}{k}"] = {"algo": algo, "prev": "sft" if k == 1 else f"{p}{k - 1}"}
    return {
        "experiment": f"genpref-{task}-{seed}", "seed": seed,
        "task": {"num_prompts": 240, "sft_per_prompt": 4, "pairs_per_prompt": 6, "annotator_temperature": 0.3,
                 "intransitive": INTRANSITIVE if task == "intransitive" else 0.0},
        "model": {"max_length": 64, "arch": {"hidden_size": 96, "num_layers": 2, "num_heads": 4,
                                             "intermediate_size": 256, "vocab_size": 1024}},
        "sft": {"epochs": 4, "lr": 0.004, "batch_size": 32},
        "reward_model": {"epochs": 5, "lr": 0.001, "batch_size": 32},
        "preference_model": {"enabled": True, "epochs": 4},
        "curate": {"judge_fraction": 0.0}, "judge_model": {"enabled": False},
        "generate": {"n": 4, "max_new_tokens": 24},
        "dpo": {"beta": 0.3, "ref": "prev", **train},
        "sppo": train, "dno": train, "inpo": train, "lipo": train,
        "evaluate": {"max_new_tokens": 24, "samples_per_prompt": 4, "temperature": 1.0},
        "registry": {"enabled": False},
        "rounds": rounds,
    }


def run_project(work: Path, task: str, seed: int) -> dict:
    root = work / f"{task}-{seed}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copytree(REPO / "alignloop", root / "alignloop", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(params_for(task, seed), sort_keys=False))
    bin_ = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(root),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["alignloop", "render"], ["dvc", "repro"]):
        with open(root / "bench.log", "a") as log:
            subprocess.run(cmd, cwd=root, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    read = lambda rel: json.loads((root / rel).read_text())  # noqa: E731
    out = {"task": task, "seed": seed, "wall_s": time.time() - t0,
           "pm": read("data/models/pm.heldout.json"), "rm": read("data/models/rm.heldout.json"), "rounds": {}}
    for algo, p in METHODS.items():
        for k in (1, 2, 3):
            ev = read(f"data/rounds/{p}{k}/eval.json")
            out["rounds"][f"{algo}{k}"] = {key: ev.get(key) for key in (
                "win_rate_vs_sft_gold", "gold_reward", "kl_to_sft", "proxy_reward", "style_shares")}
    print(f"{task} seed {seed}: {out['wall_s'] / 60:.1f} min", flush=True)
    return out


def summary(values: list[float]) -> dict:
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return {"mean": m, "low": m, "high": m, "n": n}
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    h = T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"mean": m, "low": m - h, "high": m + h, "n": n}


def table(runs: list[dict]) -> dict:
    out = {}
    for task in sorted({r["task"] for r in runs}):
        rs = [r for r in runs if r["task"] == task]
        rows = {"pm_eval_accuracy": summary([r["pm"]["eval_accuracy"] for r in rs]),
                "pm_eval_gold_accuracy": summary([r["pm"]["eval_gold_accuracy"] for r in rs]),
                "pm_symmetry_error": summary([r["pm"]["symmetry_error"] for r in rs]),
                "rm_eval_gold_accuracy": summary([r["rm"]["eval_gold_accuracy"] for r in rs])}
        for key in rs[0]["rounds"]:
            rows[key] = {m: summary([r["rounds"][key][m] for r in rs])
                         for m in ("win_rate_vs_sft_gold", "gold_reward", "kl_to_sft")}
        out[task] = rows
    return out


NAMES = {"dpo": "iterative DPO (BT reward model)", "sppo": "SPPO", "dno": "DNO", "inpo": "INPO",
         "lipo": "LiPO-λ (BT reward model's rankings)"}


def markdown_table(result: dict) -> str:
    """The README's table from a bench/out/general_prefs.json result: per task and method, round 3's gold win-rate vs
    SFT and KL to SFT (mean over seeds [95 % t-interval]), rounds 1-2's win-rates, and on the intransitive task the
    share of round-3 samples in each style."""
    fmt = lambda s, d=3: f"{s['mean']:.{d}f} [{s['low']:.{d}f}, {s['high']:.{d}f}]"  # noqa: E731
    out = []
    for task, rows in result["table"].items():
        seeds = rows["pm_eval_accuracy"]["n"]
        runs = [r for r in result["runs"] if r["task"] == task]
        per_seed = lambda key, m: [r["rounds"][key][m] for r in runs]  # noqa: E731
        out += [f"**{task} task** ({seeds} seeds; preference model held-out accuracy {fmt(rows['pm_eval_accuracy'], 2)}, "
                f"vs the true preference {fmt(rows['pm_eval_gold_accuracy'], 2)}, symmetry error "
                f"{fmt(rows['pm_symmetry_error'], 2)}; reward model vs the true preference "
                f"{fmt(rows['rm_eval_gold_accuracy'], 2)})", "",
                "| method | gold win-rate vs SFT, round 3 | minus iterative DPO's (paired by seed) | round 1 | round 2 | "
                "KL to SFT, round 3 [min, max] | gold reward, round 3 |"
                + (" paper / rock / scissors share, round 3 |" if task == "intransitive" else ""),
                "|---|---|---|---|---|---|---|" + ("---|" if task == "intransitive" else "")]
        for algo, name in NAMES.items():
            r1, r2, r3 = (rows[f"{algo}{k}"] for k in (1, 2, 3))
            diff = summary([a - b for a, b in zip(per_seed(f"{algo}3", "win_rate_vs_sft_gold"),
                                                   per_seed("dpo3", "win_rate_vs_sft_gold"))])
            kl = per_seed(f"{algo}3", "kl_to_sft")
            line = (f"| {name} | {fmt(r3['win_rate_vs_sft_gold'])} | {'' if algo == 'dpo' else fmt(diff)} | "
                    f"{r1['win_rate_vs_sft_gold']['mean']:.3f} | {r2['win_rate_vs_sft_gold']['mean']:.3f} | "
                    f"{sum(kl) / len(kl):.2f} [{min(kl):.2f}, {max(kl):.2f}] | {r3['gold_reward']['mean']:.3f} |")
            if task == "intransitive":
                shares = [r["rounds"][f"{algo}3"]["style_shares"] for r in result["runs"] if r["task"] == task]
                avg = {k: sum(s[k] for s in shares) / len(shares) for k in ("paper", "rock", "scissors")}
                line += f" {avg['paper']:.2f} / {avg['rock']:.2f} / {avg['scissors']:.2f} |"
            out.append(line)
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tasks", nargs="+", default=["default", "intransitive"], choices=["default", "intransitive"])
    ap.add_argument("--parallel", type=int, default=2, help="projects at a time (each single-threaded)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/alignloop-bench-genpref"))
    ap.add_argument("--table", action="store_true", help="print the README table of the last run and exit")
    args = ap.parse_args(argv)
    if args.table:
        from _out import OUT

        print(markdown_table(json.loads((OUT / "general_prefs.json").read_text())))
        return 0
    jobs = [(t, s) for s in args.seeds for t in args.tasks]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: run_project(args.work, *job), jobs))
    write_result("general_prefs", {"intransitive_weight": INTRANSITIVE, "runs": runs, "table": table(runs),
                                   "machine": f"{os.cpu_count()} CPU cores, {args.parallel} projects at a time"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
