"""Stage `evaluate`: measure one policy (``--round sft`` or a round) on the held-out prompts.

Samples ``evaluate.samples_per_prompt`` responses per eval prompt with a fixed seed (all settings are params and are
written into the result), then reports: mean proxy reward (the reward model, or the ensemble combined as the score
stage does) and mean gold reward (embedded task only: the hidden function the pipeline never trains on), each with
a 95 % bootstrap interval over prompts; win-rates against the SFT policy's and the current champion's samples on
the same prompts and seeds, by proxy and by gold, with intervals (on the embedded task's intransitive variant the gold
win-rate is the mean true preference P_gold(mine > theirs), and the shares of its response styles are reported); KL
to SFT and to the round's starting policy (exact per-token KL over the vocabulary on samples drawn at temperature 1,
k1/k3 beside it); response length; diversity (distinct-1/2, per-prompt self-BLEU); the reward model's held-out pair
accuracy; the policy's ranking accuracy on held-out preference pairs (does it give the chosen response the higher
likelihood, alone and relative to SFT — "Preference Learning Algorithms Do Not Learn Preference Rankings"); and the
proxy-minus-gold gain gap over SFT, the over-optimisation signal.
"""

from __future__ import annotations

import sys

from alignloop.core import files
from alignloop.core.metrics import (bootstrap_ci, distinct_n, mean, overoptimisation_gap, pair_accuracy,
                                    self_bleu, win_outcomes)
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import champion_before, champion_sample_deps, reward_model_dirs
from alignloop.pipeline.layout import eval_paths
from alignloop.pipeline.specs import Ctx, StageSpec
from alignloop.pipeline.tracking import stage_run

PROMPTS, PREFS, RM_HELDOUT = layout.PROMPTS_EVAL, layout.PREFS_EVAL, layout.RM_HELDOUT
_CODE = ("alignloop.ml.inference", "alignloop.ml.modeling", "alignloop.core.ensemble", "alignloop.core.metrics",
         "alignloop.pipeline.lineage")
_PARAMS = ("model", "evaluate", "score", "reward_model.ensemble", "data.source", "judge_model.enabled")


def _gold(ctx: Ctx) -> list[str]:
    return ["alignloop.core.synthetic"] if ctx.params.data.source == "embedded" else []


def _deps(ctx: Ctx) -> list[str]:
    judge = [layout.JUDGE, layout.JUDGE_HELDOUT] if ctx.params.judge_model.enabled else []
    return [PROMPTS, PREFS, *reward_model_dirs(ctx.params), RM_HELDOUT, *judge]


def _round_deps(ctx: Ctx) -> list[str]:
    sft_json, sft_samples = eval_paths("sft")
    prev = layout.policy_dir(ctx.params.rounds[ctx.round].prev)  # for kl_to_prev (the SFT dir when prev is sft)
    return list(dict.fromkeys([*_deps(ctx), layout.policy_dir(ctx.round), layout.SFT, prev, sft_json, sft_samples,
                               *champion_sample_deps(ctx.params, ctx.round)]))


SPECS = [
    StageSpec(name="evaluate_sft", module="alignloop.pipeline.stages.evaluate", scope="before", order=5, args="--round sft",
              help="the SFT baseline on the held-out prompts", code=_CODE, extra_code=_gold, params=_PARAMS,
              extra_params=Ctx.gold_preference_keys,
              deps=lambda c: [*_deps(c), layout.SFT], outs=lambda c: [eval_paths("sft")[1]],
              metrics=lambda c: [eval_paths("sft")[0]], gpu=True),
    StageSpec(name="evaluate", module="alignloop.pipeline.stages.evaluate", scope="round", order=4,
              help="proxy/gold reward, win-rates vs SFT and champion, KL, length, diversity, ranking accuracy",
              code=_CODE, extra_code=_gold, extra_params=Ctx.gold_preference_keys, params=(*_PARAMS, "registry.enabled"),
              round_params=("prev",),
              deps=_round_deps, outs=lambda c: [eval_paths(c.round)[1]], metrics=lambda c: [eval_paths(c.round)[0]],
              gpu=True),
]


def _ci(bounds: tuple[float, float]) -> dict[str, float]:
    return {"low": bounds[0], "high": bounds[1]}


def style_shares(responses: list[str]) -> dict[str, float]:
    """Share of ``responses`` in each rock-paper-scissors style of the intransitive task, and "none" for the rest."""
    from alignloop.core.synthetic import STYLES_RPS, style_of

    styles = [style_of(r) or "none" for r in responses]
    return {name: styles.count(name) / len(styles) for name in (*STYLES_RPS, "none")}


def gold_preferences(rows: list[dict], ref: list[dict], params) -> list[float]:
    """Per-comparison P_gold(mine > theirs) of paired samples (the intransitive task's gold win outcome): the
    annotators' true preference, not a comparison of scalar gold rewards, which would miss its style cycle."""
    from alignloop.core.synthetic import gold_preference

    t = params.task
    return [gold_preference(r["prompt"], r["response"], b["response"], t.annotator_temperature, t.intransitive)
            for r, b in zip(rows, ref)]


def kl_samples(policy, tokenizer, prompts: list[dict], params, quality_rows: list[dict]) -> list[dict]:
    """Samples (with their token ids) for the KL estimates: drawn from the policy as it is — temperature 1, top_p 1,
    evaluate.kl_samples_per_prompt per prompt, evaluate.seed — so the estimate is KL(pi || pi_ref) whatever
    temperature the quality samples used. Those are reused when they were drawn exactly so."""
    from alignloop.ml.inference import sample

    e = params.evaluate
    if e.temperature == 1.0 and e.top_p == 1.0 and e.kl_samples_per_prompt == e.samples_per_prompt:
        return quality_rows
    return sample(policy, tokenizer, [(p["id"], p["prompt"]) for p in prompts], n=e.kl_samples_per_prompt,
                  max_new_tokens=e.max_new_tokens, temperature=1.0, top_p=1.0, batch_size=e.batch_size, seed=e.seed,
                  max_prompt_tokens=params.model.max_length - e.max_new_tokens, desc="kl samples", with_ids=True)


def run(params, args) -> None:
    from alignloop.ml.inference import RewardEnsemble, check_prompt_lengths, response_logprobs, sample, sequence_kl
    from alignloop.ml.modeling import load_causal_lm, load_tokenizer

    name = args.round
    e = params.evaluate
    prompts = files.read_jsonl(PROMPTS, files.validate_prompt, id_key="id")
    policy_dir = layout.policy_dir(name)
    tokenizer = load_tokenizer(policy_dir, params.model)
    check_prompt_lengths(PROMPTS, prompts, tokenizer, params.model.max_length - e.max_new_tokens,
                         f"model.max_length {params.model.max_length} - evaluate.max_new_tokens {e.max_new_tokens}")
    policy = load_causal_lm(policy_dir, params.model)
    rows = sample(policy, tokenizer, [(p["id"], p["prompt"]) for p in prompts], n=e.samples_per_prompt,
                  max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p, batch_size=e.batch_size,
                  seed=e.seed, max_prompt_tokens=params.model.max_length - e.max_new_tokens, desc=f"evaluate {name}",
                  with_ids=True)
    texts_p, texts_r = [r["prompt"] for r in rows], [r["response"] for r in rows]
    pids = [r["prompt_id"] for r in rows]
    kw = dict(batch_size=params.score.batch_size, max_length=params.model.max_length)
    rm_dirs = reward_model_dirs(params)
    proxy, _ = RewardEnsemble.from_params(rm_dirs, params, params.score)(texts_p, texts_r, desc="proxy reward")
    for row, p in zip(rows, proxy):
        row["proxy_reward"] = p
    judge = None
    if params.judge_model.enabled:  # the held-out judge: trained on prompts no other stage saw, optimised by nobody
        judge, _ = RewardEnsemble([layout.JUDGE], params.model, batch_size=params.score.batch_size)(
            texts_p, texts_r, desc="judge reward")
        for row, j in zip(rows, judge):
            row["judge_reward"] = j
    gold = None
    if params.data.source == "embedded":
        from alignloop.core.synthetic import gold_reward

        gold = [gold_reward(p, r) for p, r in zip(texts_p, texts_r)]
        for row, g in zip(rows, gold):
            row["gold_reward"] = g

    ci = dict(groups=pids, resamples=e.bootstrap_resamples, seed=e.seed)  # prompts are the unit of resampling
    by_prompt: dict = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r["response"])
    metrics = {
        "policy": name,
        "prompts": len(prompts),
        "samples": len(rows),
        "proxy_reward": mean(proxy),
        "proxy_reward_ci": _ci(bootstrap_ci(proxy, **ci)),
        "length_tokens": mean([r["num_tokens"] for r in rows]),
        "distinct_1": distinct_n(texts_r, 1),
        "distinct_2": distinct_n(texts_r, 2),
        "self_bleu": mean([self_bleu(t) for t in by_prompt.values()]),
        "stop_fraction": mean([r["finish_reason"] == "stop" for r in rows]),
        "settings": {**e.model_dump(), "reward_models": rm_dirs, "aggregate": params.score.aggregate,
                     "prompts_file": PROMPTS, "prefs_file": PREFS},
    }
    if gold is not None:
        metrics["gold_reward"] = mean(gold)
        metrics["gold_reward_ci"] = _ci(bootstrap_ci(gold, **ci))
    intransitive = gold is not None and params.task.intransitive > 0  # gold win-rates are then mean P_gold
    if intransitive:
        metrics["style_shares"] = style_shares(texts_r)  # logged to MLflow as style_shares.<style>
    rm_heldout = files.read_json(RM_HELDOUT)
    if "eval_accuracy" in rm_heldout:
        metrics["rm_eval_accuracy"] = rm_heldout["eval_accuracy"]
    if judge is not None:
        metrics["judge_reward"] = mean(judge)
        metrics["judge_reward_ci"] = _ci(bootstrap_ci(judge, **ci))
        metrics["judge_eval_accuracy"] = files.read_json(layout.JUDGE_HELDOUT).get("eval_accuracy")

    # Win-rates against the baselines' samples of the same prompts and seeds.
    champion = champion_before(params, name)
    metrics["champion"] = champion
    for label, other in (("sft", "sft"), ("champion", champion)):
        if other == name:  # SFT against itself: every comparison a tie
            metrics.update({f"win_rate_vs_{label}_{kind}": 0.5
                            for kind, mine in (("proxy", proxy), ("gold", gold), ("judge", judge)) if mine is not None})
            continue
        base = {(r["prompt_id"], r["sample_idx"]): r for r in files.read_jsonl(eval_paths(other)[1])}
        missing = [k for k in ((r["prompt_id"], r["sample_idx"]) for r in rows) if k not in base]
        if missing:
            raise files.DataError(f"{eval_paths(other)[1]}: no sample for {missing[0]} (fix: `dvc repro evaluate_{other}`)")
        ref = [base[(r["prompt_id"], r["sample_idx"])] for r in rows]
        for kind, mine in (("proxy", proxy), ("gold", gold), ("judge", judge)):
            if mine is None:
                continue
            if kind == "gold" and intransitive:
                outcomes = gold_preferences(rows, ref, params)
            else:
                outcomes = win_outcomes(mine, [b[f"{kind}_reward"] for b in ref])
            metrics[f"win_rate_vs_{label}_{kind}"] = mean(outcomes)
            metrics[f"win_rate_vs_{label}_{kind}_ci"] = _ci(bootstrap_ci(outcomes, **ci))

    # KL to SFT and to the round's starting policy, on samples of the policy as it is; ranking accuracy on held-out
    # preference pairs.
    sft_model = policy if name == "sft" else load_causal_lm(layout.policy_dir("sft"), params.model)
    if name == "sft":
        metrics.update({f"kl_to_{ref}{est}": 0.0 for ref in ("sft", "prev") for est in ("", "_k1", "_k3")})
    else:
        kl_rows = kl_samples(policy, tokenizer, prompts, params, rows)  # may be `rows` itself (temperature 1)
        prev = params.rounds[name].prev
        prev_model = sft_model if prev == "sft" else load_causal_lm(layout.policy_dir(prev), params.model)
        kl_ci = dict(groups=[r["prompt_id"] for r in kl_rows], resamples=e.bootstrap_resamples, seed=e.seed)
        for label, ref in (("sft", sft_model), ("prev", prev_model)):
            per_seq = sequence_kl(policy, ref, [r["prompt_ids"] for r in kl_rows], [r["response_ids"] for r in kl_rows],
                                  pad_id=tokenizer.pad_token_id, batch_size=params.score.batch_size, desc=f"kl to {label}")
            exact = [x["exact"] for x in per_seq]
            metrics[f"kl_to_{label}"] = mean(exact)
            metrics[f"kl_to_{label}_ci"] = _ci(bootstrap_ci(exact, **kl_ci))
            for est in ("k1", "k3"):
                metrics[f"kl_to_{label}_{est}"] = mean([x[est] for x in per_seq])
        metrics["kl_samples"] = len(kl_rows)
    prefs = files.read_jsonl(PREFS, files.validate_pair, id_key="id", allow_empty=True)
    if prefs:
        pp = [x["prompt"] for x in prefs]
        lp = {side: response_logprobs(policy, tokenizer, pp, [x[side] for x in prefs], desc=f"logp {side}", **kw)
              for side in ("chosen", "rejected")}
        metrics["ranking_accuracy"] = pair_accuracy(lp["chosen"], lp["rejected"])
        if name == "sft":
            metrics["ranking_accuracy_vs_sft"] = 0.5
        else:  # the DPO implicit reward's ranking: log pi/pi_sft of chosen vs rejected
            ref_lp = {side: response_logprobs(sft_model, tokenizer, pp, [x[side] for x in prefs], desc=f"logp sft {side}",
                                              **kw) for side in ("chosen", "rejected")}
            metrics["ranking_accuracy_vs_sft"] = pair_accuracy(
                [a - b for a, b in zip(lp["chosen"], ref_lp["chosen"])],
                [a - b for a, b in zip(lp["rejected"], ref_lp["rejected"])])
    if judge is not None:  # over-optimisation without gold: the proxy's win-rate over SFT minus the judge's
        metrics["proxy_judge_gap"] = metrics["win_rate_vs_sft_proxy"] - metrics["win_rate_vs_sft_judge"]
    if gold is not None:
        sft_m = metrics if name == "sft" else files.read_json(eval_paths("sft")[0])
        metrics["proxy_gold_gap"] = overoptimisation_gap(metrics["proxy_reward"], metrics["gold_reward"],
                                                         sft_m["proxy_reward"], sft_m["gold_reward"])
    out_json, out_samples = eval_paths(name)
    ids = ("prompt_ids", "response_ids")  # for the KL only: not part of the samples file
    files.write_jsonl(out_samples, ({k: v for k, v in r.items() if k not in ids} for r in rows))
    files.write_json(out_json, metrics)
    shown = {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}
    print(f"evaluate {name}: {shown}")
    with stage_run(params.experiment, "evaluate", {"evaluate": e.model_dump()}, name) as run:
        run.log_metrics({k: v for k, v in metrics.items() if k != "settings"})  # intervals as <name>_ci.low/.high


def main(argv=None) -> int:
    return stage_main(SPECS[1], run, extra_rounds=("sft",), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
