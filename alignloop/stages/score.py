"""Stage `score`: reward-model scores of a round's samples.

With a reward-model ensemble (reward_model.ensemble = k > 1) every member scores every sample; ``reward`` is their
combination by score.aggregate and ``member_rewards`` keeps the k raw scores (for disagreement analysis).
"""

from __future__ import annotations

import sys

from alignloop import io
from alignloop.ensemble import aggregate
from alignloop.inference import RewardEnsemble
from alignloop.metrics import mean
from alignloop.stages._cli import stage_main
from alignloop.tracking import stage_run


def run(params, args) -> None:
    r = args.round
    s = params.round_section(r, "score")
    samples = io.read_jsonl(f"data/rounds/{r}/samples.jsonl", io.validate_sample, id_key=io.SAMPLE_KEY)
    rewards, members = RewardEnsemble.from_params(params, s)([x["prompt"] for x in samples],
                                                              [x["response"] for x in samples], desc=f"score {r}")
    rows = [{"prompt_id": x["prompt_id"], "sample_idx": x["sample_idx"], "reward": rw} for x, rw in zip(samples, rewards)]
    if len(members) > 1:
        for i, row in enumerate(rows):
            row["member_rewards"] = [m[i] for m in members]
    out = f"data/rounds/{r}/scores.jsonl"
    io.write_jsonl(out, rows)
    metrics = {"samples": len(rows), "reward_mean": mean(rewards), "reward_max": max(rewards), "reward_min": min(rewards)}
    if len(members) > 1:  # how much the members disagree: mean over samples of their std (= mean - (mean - 1 * std))
        stds = [a - b for a, b in zip(aggregate(members, "mean"), aggregate(members, "mean_minus_std", 1.0))]
        metrics["member_std_mean"] = mean(stds)
    print(f"score {r}: {len(rows)} samples, mean reward {metrics['reward_mean']:.3f} -> {out}")
    with stage_run(params.experiment, "score", {"score": s.model_dump()}, r) as run:
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main("score", run, needs_round=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
