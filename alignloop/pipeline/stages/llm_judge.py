"""Stage `llm_judge`: an LLM judges a round's evaluation samples against SFT's and the champion's.

For each baseline (``llm_judge.against``) and each held-out prompt, the round's and the baseline's samples with the
same index (the first ``llm_judge.samples_per_prompt``) make a pair; the judge sees it twice, the round's response
first and then second. Reported per baseline: the win-rate (a pair scores 1, 0.5 when the orders disagree, 0) with
a 95 % bootstrap interval over prompts, the length-controlled win-rate (AlpacaEval 2), and over all judgments the
share that chose the first position (0.5: no position bias) and the share of pairs whose orders agreed. Verdicts
are cached by (judge model, template, texts) under .alignloop/llm_judge_cache/, so a rerun makes no calls.
"""

from __future__ import annotations

import sys

from alignloop.core import files
from alignloop.core.judging import (DEFAULT_TEMPLATE, first_position_rate, instruction_text, length_controlled_win_rate,
                                    order_agreement, pair_preference)
from alignloop.core.metrics import bootstrap_ci, mean
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import champion_before, champion_sample_deps
from alignloop.pipeline.specs import Ctx, StageSpec
from alignloop.pipeline.tracking import stage_run


def _deps(ctx: Ctx) -> list[str]:
    base = [layout.eval_paths("sft")[1]] if "sft" in ctx.params.llm_judge.against else []
    champ = champion_sample_deps(ctx.params, ctx.round) if "champion" in ctx.params.llm_judge.against else []
    return list(dict.fromkeys([layout.eval_paths(ctx.round)[1], *base, *champ]))


SPECS = [StageSpec(
    name="llm_judge", module="alignloop.pipeline.stages.llm_judge", scope="round", order=4,
    help="LLM-as-judge win-rates vs SFT and champion, both orders, length-controlled",
    code=("alignloop.core.judging", "alignloop.core.metrics", "alignloop.ml.llm_judge", "alignloop.pipeline.lineage"),
    # Only what changes a verdict: where the calls go and how many (concurrency, timeout and retries do not).
    params=("llm_judge.enabled", "llm_judge.base_url", "llm_judge.model", "llm_judge.template", "llm_judge.against",
            "llm_judge.samples_per_prompt", "llm_judge.max_prompts", "llm_judge.max_tokens", "llm_judge.temperature",
            "llm_judge.max_unparsed_fraction", "evaluate.seed", "evaluate.bootstrap_resamples", "registry.enabled"),
    round_params=("prev",), deps=_deps, metrics=lambda c: [layout.llm_judge_metrics(c.round)],
    applies=lambda c: c.params.llm_judge.enabled,
)]


def _pairs(mine: list[dict], theirs: list[dict], samples: int, max_prompts: int | None, other_file: str):
    """(round row, baseline row) with the same prompt and sample index, for the first prompts and samples."""
    base = {(r["prompt_id"], r["sample_idx"]): r for r in theirs}
    prompts = list(dict.fromkeys(r["prompt_id"] for r in mine))[:max_prompts]
    keep = set(prompts)
    out = []
    for r in mine:
        if r["prompt_id"] in keep and r["sample_idx"] < samples:
            b = base.get((r["prompt_id"], r["sample_idx"]))
            if b is None:
                raise files.DataError(f"{other_file}: no sample {r['sample_idx']} for prompt {r['prompt_id']!r} "
                                      "(fix: rerun its evaluate stage with the same evaluate settings)")
            out.append((r, b))
    return out


def run(params, args) -> None:
    from tqdm import tqdm

    from alignloop.ml.llm_judge import LLMJudge, Request, api_key_from_env

    cfg, name = params.llm_judge, args.round
    mine = files.read_jsonl(layout.eval_paths(name)[1], files.validate_sample)
    judge = LLMJudge(base_url=cfg.base_url, model=cfg.model, api_key=api_key_from_env(cfg.api_key_env),
                     key_env=cfg.api_key_env or "the API key variable", template=cfg.template or DEFAULT_TEMPLATE,
                     cache_dir=layout.LLM_JUDGE_CACHE, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                     concurrency=cfg.concurrency, max_tokens=cfg.max_tokens, temperature=cfg.temperature)
    champion = champion_before(params, name)
    metrics: dict = {"policy": name, "judge_model": cfg.model, "endpoint": cfg.base_url, "champion": champion}
    verdicts, cached = [], 0  # every judgment's verdict (both orders, all baselines); how many came from the cache
    done: dict[str, str] = {}  # baseline policy -> the label its metrics were written under
    for label in cfg.against:
        other = "sft" if label == "sft" else champion
        if other == name:
            continue
        if other in done:  # the champion is SFT: the same pairs, the same verdicts
            prior = done[other]
            metrics.update({k.replace(f"_vs_{prior}", f"_vs_{label}"): v for k, v in list(metrics.items())
                            if f"_vs_{prior}" in k})
            continue
        done[other] = label
        other_file = layout.eval_paths(other)[1]
        pairs = _pairs(mine, files.read_jsonl(other_file, files.validate_sample), cfg.samples_per_prompt,
                       cfg.max_prompts, other_file)
        # Both orders of every pair: the round's response shown first, then second.
        reqs = []
        for r, b in pairs:
            text = instruction_text(r["prompt"])
            reqs += [Request(text, r["response"], b["response"]), Request(text, b["response"], r["response"])]
        with tqdm(total=len(reqs), desc=f"llm judge {name} vs {label}", mininterval=2) as bar:
            got = judge.judge(reqs, progress=bar)
        bad = [g.answer for g in got if g.verdict is None]
        if len(bad) > cfg.max_unparsed_fraction * len(got):
            raise files.DataError(
                f"LLM judge at {cfg.base_url} ({cfg.model}): {len(bad)} of {len(got)} answers name neither "
                f"response, e.g. {bad[0][:120]!r} (fix: check llm_judge.model and llm_judge.template — the judge "
                "must answer 1 or 2 — or raise llm_judge.max_unparsed_fraction)")
        firsts, seconds = [g.verdict for g in got[0::2]], [g.verdict for g in got[1::2]]
        prefs = [pair_preference(a, b) for a, b in zip(firsts, seconds)]
        groups = [r["prompt_id"] for r, _ in pairs]
        low, high = bootstrap_ci(prefs, groups=groups, resamples=params.evaluate.bootstrap_resamples,
                                 seed=params.evaluate.seed)
        metrics[f"win_rate_vs_{label}_llm"] = mean(prefs)
        metrics[f"win_rate_vs_{label}_llm_ci"] = {"low": low, "high": high}
        metrics[f"lc_win_rate_vs_{label}_llm"] = length_controlled_win_rate(
            prefs, [r["num_tokens"] for r, _ in pairs], [b["num_tokens"] for _, b in pairs])
        if any(a is not None and b is not None for a, b in zip(firsts, seconds)):
            metrics[f"llm_order_agreement_vs_{label}"] = order_agreement(firsts, seconds)
        metrics[f"llm_pairs_vs_{label}"] = len(pairs)
        verdicts += firsts + seconds
        cached += sum(g.cached for g in got)
    if any(v is not None for v in verdicts):
        metrics["llm_first_position_rate"] = first_position_rate(verdicts)
    metrics.update({"llm_judgments": len(verdicts), "llm_unparsed": verdicts.count(None)})
    # How many calls this execution made and how many the cache answered go to the log and the MLflow run, not the
    # metrics file: register and report read that file, and a rerun after a kill (or answered from the cache) must
    # write the same bytes, or DVC would rerun them for nothing.
    files.write_json(layout.llm_judge_metrics(name), metrics)
    shown = {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}
    print(f"llm_judge {name}: {shown}; {judge.calls} calls, {cached} answered from the cache")
    logged = {k: v for k, v in cfg.model_dump().items() if k != "template"}  # the key is never in params at all
    with stage_run(params.experiment, "llm_judge", {"llm_judge": logged}, name) as run:
        run.log_metrics({**{k: v for k, v in metrics.items() if not isinstance(v, str)},
                         "llm_calls": judge.calls, "llm_cached": cached})


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
