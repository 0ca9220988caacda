"""Stage `score`: reward-model scores of a round's samples.

With a reward-model ensemble (reward_model.ensemble = k > 1) every member scores every sample; ``reward`` is their
combination by score.aggregate and ``member_rewards`` keeps the k raw scores (for disagreement analysis).
"""

from __future__ import annotations

import sys

from alignloop.core import files
from alignloop.core.ensemble import aggregate
from alignloop.core.metrics import mean
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import reward_model_dirs
from alignloop.pipeline.specs import StageSpec
from alignloop.pipeline.tracking import stage_run


SPECS = [StageSpec(
    name="score", module="alignloop.pipeline.stages.score", scope="round", order=1, help="reward-model score of every sample (ensemble combined)",
    code=("alignloop.ml.inference", "alignloop.ml.modeling", "alignloop.core.ensemble", "alignloop.core.metrics",
          "alignloop.pipeline.lineage"),
    params=("model", "reward_model.ensemble"), round_params=("score",),
    deps=lambda c: [*reward_model_dirs(c.params), layout.samples(c.round)],
    outs=lambda c: [layout.scores(c.round)],
    applies=lambda c: c.rejection_sampled, gpu=True,
)]


def run(params, args) -> None:
    r = args.round
    s = params.round_section(r, "score")
    from alignloop.ml.inference import RewardEnsemble

    samples = files.read_jsonl(layout.samples(r), files.validate_sample, id_key=files.SAMPLE_KEY)
    rewards, members = RewardEnsemble.from_params(reward_model_dirs(params), params, s)([x["prompt"] for x in samples],
                                                              [x["response"] for x in samples], desc=f"score {r}")
    rows = [{"prompt_id": x["prompt_id"], "sample_idx": x["sample_idx"], "reward": rw} for x, rw in zip(samples, rewards)]
    if len(members) > 1:
        for i, row in enumerate(rows):
            row["member_rewards"] = [m[i] for m in members]
    out = layout.scores(r)
    files.write_jsonl(out, rows)
    metrics = {"samples": len(rows), "reward_mean": mean(rewards), "reward_max": max(rewards), "reward_min": min(rewards)}
    if len(members) > 1:  # how much the members disagree: mean over samples of their std (= mean - (mean - 1 * std))
        stds = [a - b for a, b in zip(aggregate(members, "mean"), aggregate(members, "mean_minus_std", 1.0))]
        metrics["member_std_mean"] = mean(stds)
    print(f"score {r}: {len(rows)} samples, mean reward {metrics['reward_mean']:.3f} -> {out}")
    with stage_run(params.experiment, "score", {"score": s.model_dump()}, r) as run:
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
