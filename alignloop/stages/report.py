"""Stage `report`: one row per policy (SFT, then each round) for `dvc plots` and a summary for `dvc metrics`."""

from __future__ import annotations

import sys

from alignloop import io
from alignloop.stages._cli import stage_main
from alignloop.stages.evaluate import eval_paths
from alignloop.tracking import stage_run

FIELDS = ["proxy_reward", "gold_reward", "win_rate_vs_sft_proxy", "win_rate_vs_sft_gold", "kl_to_sft",
          "length_tokens", "distinct_2"]


def run(params, args) -> None:
    rows = []
    for step, name in enumerate(["sft", *params.rounds]):
        m = io.read_json(eval_paths(name)[0])
        rows.append({"step": step, "policy": name, **{k: m[k] for k in FIELDS if k in m}})
    io.write_json("data/report/rounds.json", rows)
    first, last = rows[0], rows[-1]
    summary = {"final_policy": last["policy"], "final": {k: v for k, v in last.items() if k in FIELDS},
               "sft": {k: v for k, v in first.items() if k in FIELDS}}
    if "gold_reward" in last:
        summary["gold_gain_over_sft"] = last["gold_reward"] - first["gold_reward"]
    io.write_json("data/report/summary.json", summary)
    for r in rows:
        print("report: " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    with stage_run(params.experiment, "report", {"rounds": list(params.rounds)}) as run:
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        run.log_artifact("data/report/rounds.json")


def main(argv=None) -> int:
    return stage_main("report", run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
