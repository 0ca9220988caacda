"""Stage `score`: reward-model scores of a round's samples."""

from __future__ import annotations

import sys

from alignloop import io
from alignloop.inference import reward_scores
from alignloop.metrics import mean
from alignloop.modeling import load_reward_model, load_tokenizer
from alignloop.stages._cli import stage_main
from alignloop.tracking import stage_run

RM = "data/models/rm"


def run(params, args) -> None:
    r = args.round
    s = params.round_section(r, "score")
    samples = io.read_jsonl(f"data/rounds/{r}/samples.jsonl", io.validate_sample)
    tokenizer = load_tokenizer(RM, params.model)
    rm = load_reward_model(RM, params.model)
    rewards = reward_scores(rm, tokenizer, [x["prompt"] for x in samples], [x["response"] for x in samples],
                            batch_size=s.batch_size, max_length=params.model.max_length, desc=f"score {r}")
    rows = [{"prompt_id": x["prompt_id"], "sample_idx": x["sample_idx"], "reward": rw} for x, rw in zip(samples, rewards)]
    out = f"data/rounds/{r}/scores.jsonl"
    io.write_jsonl(out, rows)
    metrics = {"samples": len(rows), "reward_mean": mean(rewards), "reward_max": max(rewards), "reward_min": min(rewards)}
    print(f"score {r}: {len(rows)} samples, mean reward {metrics['reward_mean']:.3f} -> {out}")
    with stage_run(params.experiment, "score", {"score": s.model_dump()}, r) as run:
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main("score", run, needs_round=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
