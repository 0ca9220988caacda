"""Stage `report`: one row per policy (SFT, then each round) for `dvc plots`, the same as one PNG (logged to MLflow
too), and a summary for `dvc metrics`."""

from __future__ import annotations

import sys

from alignloop.core import files
from alignloop.core.config import ROUND_METRICS as FIELDS
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.layout import eval_paths
from alignloop.pipeline.specs import Ctx, StageSpec
from alignloop.pipeline.tracking import stage_run

PNG, ROWS = layout.REPORT_PNG, layout.REPORT_ROUNDS


def _dvc_plots(ctx: Ctx) -> list:
    """dvc.yaml's top-level ``plots``: the report's rounds.json, one chart per quantity, and the PNG."""
    gold = ctx.params.data.source == "embedded"
    judge = ctx.params.judge_model.enabled

    def chart(key, title, fields):
        return {key: {"x": "step", "y": {ROWS: fields}, "title": title, "x_label": "round"}}

    return [
        chart("reward", "Reward by round", ["proxy_reward", "gold_reward"] if gold else ["proxy_reward"]),
        chart("win_rate", "Win-rate vs SFT", ["win_rate_vs_sft_proxy", "win_rate_vs_champion_proxy"]
              + (["win_rate_vs_sft_gold", "win_rate_vs_champion_gold"] if gold else [])
              + (["win_rate_vs_sft_judge", "win_rate_vs_champion_judge"] if judge else [])),
        chart("kl", "KL to SFT", ["kl_to_sft", "kl_to_prev"]),
        *([chart("overoptimisation", "Proxy gain minus gold gain over SFT", ["proxy_gold_gap"])] if gold else []),
        *([chart("judge_gap", "Proxy minus judge win-rate over SFT", ["proxy_judge_gap"])] if judge else []),
        *([chart("llm_win_rate", "LLM-judge win-rate (raw and length-controlled)",
                 ["win_rate_vs_sft_llm", "lc_win_rate_vs_sft_llm", "win_rate_vs_champion_llm"])]
          if ctx.params.llm_judge.enabled else []),
        chart("length", "Response length", ["length_tokens"]),
        chart("diversity", "Diversity (distinct-2 up, self-BLEU down = more diverse)", ["distinct_2", "self_bleu"]),
        chart("ranking", "Ranking accuracy on held-out preference pairs", ["ranking_accuracy", "ranking_accuracy_vs_sft"]),
        PNG,
    ]


SPECS = [StageSpec(
    name="report", module="alignloop.pipeline.stages.report", scope="after", order=0, help="one row per policy for dvc plots; summary metrics",
    code=(), params=("llm_judge.enabled",),
    deps=lambda c: [eval_paths(n)[0] for n in ["sft", *c.params.rounds]]
    + ([layout.llm_judge_metrics(r) for r in c.params.rounds] if c.params.llm_judge.enabled else []),
    plots=lambda c: [ROWS, PNG], metrics=lambda c: [layout.REPORT_SUMMARY], dvc_plots=_dvc_plots,
)]
PANELS = [  # (title, fields): what the PNG shows, one panel each
    ("Reward", ["proxy_reward", "gold_reward"]),
    ("Win-rate vs SFT", ["win_rate_vs_sft_proxy", "win_rate_vs_sft_gold"]),
    ("KL to SFT", ["kl_to_sft"]),
    ("Response length (tokens)", ["length_tokens"]),
    ("Diversity", ["distinct_2", "self_bleu"]),
    ("Over-optimisation: proxy gain - gold gain", ["proxy_gold_gap"]),
]


def plot(rows: list[dict], path: str) -> None:
    """One PNG, a panel per quantity across policies; 95 % bootstrap intervals (where evaluated) as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    names = [r["policy"] for r in rows]
    for ax, (title, fields) in zip(axes.flat, PANELS):
        for f in fields:
            if not all(f in r for r in rows):
                continue
            ys = [r[f] for r in rows]
            ci = [r.get(f + "_ci") or {"low": y, "high": y} for r, y in zip(rows, ys)]  # none: a point
            err = [[y - c["low"] for y, c in zip(ys, ci)], [c["high"] - y for y, c in zip(ys, ci)]]
            ax.errorbar(range(len(rows)), ys, yerr=err, marker="o", capsize=3, label=f)
        ax.set_title(title)
        ax.set_xticks(range(len(rows)), names, rotation=30)
        ax.grid(alpha=0.3)
        if len(fields) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with files.atomic_file(path, "wb") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def run(params, args) -> None:
    rows = []
    for step, name in enumerate(["sft", *params.rounds]):
        m = files.read_json(eval_paths(name)[0])
        if params.llm_judge.enabled:  # SFT against itself is a tie, as evaluate writes for the other judges
            m.update(files.read_json(layout.llm_judge_metrics(name)) if name != "sft" else
                     {f"{lc}win_rate_vs_{b}_llm": 0.5 for lc in ("", "lc_") for b in ("sft", "champion")})
        rows.append({"step": step, "policy": name, **{k: m[k] for k in FIELDS if k in m},
                     **{k + "_ci": m[k + "_ci"] for k in FIELDS if k + "_ci" in m}})
    # `dvc plots` reads a list of rows only when every row has the same keys: keep the fields all policies have
    # (llm_first_position_rate, say, exists for rounds only).
    common = set.intersection(*(set(r) for r in rows))
    files.write_json(ROWS, [{k: v for k, v in r.items() if k in common and not k.endswith("_ci")} for r in rows])
    plot(rows, PNG)
    first, last = rows[0], rows[-1]
    summary = {"final_policy": last["policy"], "final": {k: v for k, v in last.items() if k in FIELDS},
               "sft": {k: v for k, v in first.items() if k in FIELDS}}
    if "gold_reward" in last:
        summary["gold_gain_over_sft"] = last["gold_reward"] - first["gold_reward"]
    files.write_json(layout.REPORT_SUMMARY, summary)
    for r in rows:
        print("report: " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                                     if not k.endswith("_ci")))
    with stage_run(params.experiment, "report", {"rounds": list(params.rounds)}) as run:
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        run.log_artifact(ROWS)
        run.log_artifact(PNG)


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
