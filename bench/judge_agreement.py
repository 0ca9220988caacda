"""How far to trust each judge: agreement with the hidden gold reward on the embedded task.

For every round of a finished embedded pipeline (default: this repo after `make demo`), each of the round's
evaluation samples is compared with SFT's sample of the same prompt and index (the comparisons the win-rates vs
SFT are made of) by the proxy reward model, the held-out judge model and gold. Reported per round and judge: the
share of comparisons gold decides (no gold tie) on which the judge names the same winner, with a 95 % bootstrap
interval over prompts; and the held-out pair accuracies of the reward model and the judge (vs annotator labels and
vs gold) from their training stages. The proxy is the reward model the rounds optimised, so its agreement falling
round by round while the judge's holds is over-optimisation seen without gold.

The LLM-judge path is not measured here: on the embedded task there is no LLM to serve (tests/test_llm_judge.py
checks the path against a server that answers from gold, which agrees with gold by construction).

    python bench/judge_agreement.py [--project DIR]     # seconds: reads files only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _out import write_result  # noqa: E402
from alignloop.core.metrics import bootstrap_ci, mean  # noqa: E402
from alignloop.pipeline import layout  # noqa: E402


def agreement(rows: list[dict], base: dict, judge: str) -> tuple[float, tuple[float, float], int]:
    """(share agreeing with gold, its interval, comparisons) over the comparisons gold does not tie."""
    hits, groups = [], []
    for r in rows:
        b = base[(r["prompt_id"], r["sample_idx"])]
        gold = r["gold_reward"] - b["gold_reward"]
        if gold == 0:
            continue
        hits.append(float((r[f"{judge}_reward"] - b[f"{judge}_reward"]) * gold > 0))
        groups.append(r["prompt_id"])
    return mean(hits), bootstrap_ci(hits, groups=groups, resamples=1000, seed=0), len(hits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=REPO)
    root = ap.parse_args().project

    def jsonl(rel: str) -> list[dict]:
        return [json.loads(line) for line in (root / rel).read_text().splitlines() if line.strip()]

    params = yaml.safe_load((root / layout.PARAMS).read_text())
    base = {(r["prompt_id"], r["sample_idx"]): r for r in jsonl(layout.eval_paths("sft")[1])}
    judges = ["proxy"] + (["judge"] if "judge_reward" in next(iter(base.values())) else [])
    result: dict = {"project": str(root), "rounds": {}}
    for name in params.get("rounds", {}):
        rows = jsonl(layout.eval_paths(name)[1])
        result["rounds"][name] = {}
        for j in judges:
            share, (lo, hi), n = agreement(rows, base, j)
            result["rounds"][name][j] = {"agreement_with_gold": share, "ci": [lo, hi], "comparisons": n}
    for label, path in (("reward_model", layout.RM_HELDOUT), ("judge_model", layout.JUDGE_HELDOUT)):
        if (root / path).exists():
            held = json.loads((root / path).read_text())
            result[f"{label}_heldout"] = {k: v for k, v in held.items() if "accuracy" in k or k.endswith("pairs")}
    print("| round | " + " | ".join(f"{j}: agrees with gold [95 % CI]" for j in judges) + " | comparisons |")
    print("|---|" + "---|" * (len(judges) + 1))
    for name, per in result["rounds"].items():
        cells = [f"{per[j]['agreement_with_gold']:.3f} [{per[j]['ci'][0]:.3f}, {per[j]['ci'][1]:.3f}]" for j in judges]
        print(f"| {name} | " + " | ".join(cells) + f" | {per[judges[0]]['comparisons']} |")
    write_result("judge_agreement", result)


if __name__ == "__main__":
    main()
