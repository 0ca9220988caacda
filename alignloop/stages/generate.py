"""Stage `generate`: sample n responses per training prompt from the round's starting policy."""

from __future__ import annotations

import sys
import time

from alignloop import io
from alignloop.modeling import load_causal_lm, load_tokenizer
from alignloop.inference import sample
from alignloop.stages._cli import stage_main
from alignloop.tracking import stage_run

PROMPTS = "data/curated/prompts/train.jsonl"


def run(params, args) -> None:
    r = args.round
    g = params.round_section(r, "generate")
    policy = params.policy_dir(params.rounds[r].prev)
    prompts = io.read_jsonl(PROMPTS, io.validate_prompt, id_key="id")[: g.max_prompts]
    tokenizer = load_tokenizer(policy, params.model)
    model = load_causal_lm(policy, params.model)
    t0 = time.perf_counter()
    rows = sample(
        model, tokenizer, [(p["id"], p["prompt"]) for p in prompts],
        n=g.n, max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
        batch_size=g.batch_size, seed=params.seed * 1000 + list(params.rounds).index(r),
        max_prompt_tokens=params.model.max_length - g.max_new_tokens, desc=f"generate {r}",
    )
    seconds = time.perf_counter() - t0
    out = f"data/rounds/{r}/samples.jsonl"
    io.write_jsonl(out, rows)
    tokens = sum(x["num_tokens"] for x in rows)
    metrics = {"prompts": len(prompts), "samples": len(rows), "output_tokens": tokens,
               "tokens_per_s": tokens / seconds, "seconds": seconds,
               "stop_fraction": sum(x["finish_reason"] == "stop" for x in rows) / len(rows)}
    print(f"generate {r}: {len(rows)} samples from {policy} at {metrics['tokens_per_s']:.0f} tokens/s -> {out}")
    with stage_run(params.experiment, "generate", {"generate": g.model_dump(), "prev": params.rounds[r].prev}, r) as run:
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main("generate", run, needs_round=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
