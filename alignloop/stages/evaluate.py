"""Stage `evaluate`: measure one policy (``--round sft`` or a round) on the held-out prompts.

Samples ``evaluate.samples_per_prompt`` responses per eval prompt with a fixed seed, then reports mean proxy
reward (the reward model), mean gold reward (embedded task only: the hidden function the pipeline never
trains on), win-rates against the SFT policy's samples on the same prompts, KL to SFT, length and distinct-2.
"""

from __future__ import annotations

import sys

from alignloop import io
from alignloop.inference import response_logprobs, reward_scores, sample
from alignloop.metrics import distinct_n, kl_estimate, mean, win_rate
from alignloop.modeling import load_causal_lm, load_reward_model, load_tokenizer
from alignloop.stages._cli import stage_main
from alignloop.tracking import stage_run

PROMPTS = "data/curated/prompts/eval.jsonl"
RM = "data/models/rm"


def eval_paths(name: str) -> tuple[str, str]:
    """(metrics json, samples jsonl) of a policy's evaluation."""
    if name == "sft":
        return "data/eval/sft.json", "data/eval/sft_samples.jsonl"
    return f"data/rounds/{name}/eval.json", f"data/rounds/{name}/eval_samples.jsonl"


def run(params, args) -> None:
    name = args.round
    e = params.evaluate
    prompts = io.read_jsonl(PROMPTS, io.validate_prompt, id_key="id")
    policy_dir = params.policy_dir(name)
    tokenizer = load_tokenizer(policy_dir, params.model)
    policy = load_causal_lm(policy_dir, params.model)
    rows = sample(policy, tokenizer, [(p["id"], p["prompt"]) for p in prompts], n=e.samples_per_prompt,
                  max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p, batch_size=e.batch_size,
                  seed=e.seed, max_prompt_tokens=params.model.max_length - e.max_new_tokens, desc=f"evaluate {name}")
    texts_p, texts_r = [r["prompt"] for r in rows], [r["response"] for r in rows]
    kw = dict(batch_size=params.score.batch_size, max_length=params.model.max_length)
    rm = load_reward_model(RM, params.model)
    proxy = reward_scores(rm, load_tokenizer(RM, params.model), texts_p, texts_r, desc="proxy reward", **kw)
    for row, p in zip(rows, proxy):
        row["proxy_reward"] = p
    gold = None
    if params.data.source == "embedded":
        from alignloop.task import gold_reward

        gold = [gold_reward(p, r) for p, r in zip(texts_p, texts_r)]
        for row, g in zip(rows, gold):
            row["gold_reward"] = g

    metrics = {
        "policy": name,
        "prompts": len(prompts),
        "samples": len(rows),
        "proxy_reward": mean(proxy),
        "length_tokens": mean([r["num_tokens"] for r in rows]),
        "distinct_2": distinct_n(texts_r, 2),
        "stop_fraction": mean([r["finish_reason"] == "stop" for r in rows]),
        "settings": {**e.model_dump(), "reward_model": RM, "prompts_file": PROMPTS},
    }
    if gold is not None:
        metrics["gold_reward"] = mean(gold)
    if name == "sft":
        metrics.update({"kl_to_sft": 0.0, "win_rate_vs_sft_proxy": 0.5, **({"win_rate_vs_sft_gold": 0.5} if gold else {})})
    else:
        sft_json, sft_samples = eval_paths("sft")
        base = {(r["prompt_id"], r["sample_idx"]): r for r in io.read_jsonl(sft_samples)}
        missing = [k for k in ((r["prompt_id"], r["sample_idx"]) for r in rows) if k not in base]
        if missing:
            raise io.DataError(f"{sft_samples}: no SFT sample for {missing[0]} (fix: `dvc repro evaluate_sft`)")
        ref = [base[(r["prompt_id"], r["sample_idx"])] for r in rows]
        metrics["win_rate_vs_sft_proxy"] = win_rate(proxy, [b["proxy_reward"] for b in ref])
        if gold is not None:
            metrics["win_rate_vs_sft_gold"] = win_rate(gold, [b["gold_reward"] for b in ref])
        sft_model = load_causal_lm(params.policy_dir("sft"), params.model)
        lp_pol = response_logprobs(policy, tokenizer, texts_p, texts_r, desc="logp policy", **kw)
        lp_ref = response_logprobs(sft_model, tokenizer, texts_p, texts_r, desc="logp sft", **kw)
        metrics["kl_to_sft"] = kl_estimate(lp_pol, lp_ref)
    out_json, out_samples = eval_paths(name)
    io.write_jsonl(out_samples, rows)
    io.write_json(out_json, metrics)
    shown = {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}
    print(f"evaluate {name}: {shown}")
    with stage_run(params.experiment, "evaluate", {"evaluate": e.model_dump()}, name) as run:
        run.log_metrics({k: v for k, v in metrics.items() if k != "settings"})


def main(argv=None) -> int:
    return stage_main("evaluate", run, needs_round=True, extra_rounds=("sft",), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
