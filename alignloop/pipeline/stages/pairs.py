"""Stage `pairs`: best-vs-worst preference pairs from a round's scored samples.

With ``pairs.listwise`` it also writes ``rankings.jsonl``: per prompt, every usable response ranked best first
(equal rewards share a rank), the input of listwise losses.
"""

from __future__ import annotations

import sys

from alignloop.core import files
from alignloop.core.pairs import read_groups, select_pairs
from alignloop.core.seeds import round_seed
from alignloop.core.selection import length_penalised_pair, max_random_pair, ranked
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.specs import Ctx, StageSpec
from alignloop.pipeline.tracking import stage_run


def _sampled(ctx: Ctx) -> bool:
    return (ctx.rnd.algo == "dpo" and ctx.section("dpo").pairs == "sampled") or ctx.rnd.algo == "lipo"


def _listwise(ctx: Ctx) -> bool:
    """rankings.jsonl too: when pairs.listwise asks for it, and always for lipo rounds (their training data)."""
    return ctx.section("pairs").listwise or ctx.rnd.algo == "lipo"


SPECS = [StageSpec(
    name="pairs", module="alignloop.pipeline.stages.pairs", scope="round", order=2, help="best-vs-worst (or other strategy) pairs from scored samples",
    code=("alignloop.core.pairs", "alignloop.core.selection", "alignloop.core.seeds"),
    params=("seed",), round_params=("pairs",),
    extra_params=lambda c: [f"rounds.{c.round}.algo"] if c.rnd.algo == "lipo" else [],  # lipo: rankings always
    deps=lambda c: [layout.samples(c.round), layout.scores(c.round)],
    outs=lambda c: [layout.pairs(c.round)] + ([layout.rankings(c.round)] if _listwise(c) else []),
    metrics=lambda c: [layout.pairs_metrics(c.round)],
    applies=_sampled,
)]


def _strategy(params, r: str, p):
    import random

    if p.strategy == "max_random":  # seeded per round; draws in prompt-id order, so reruns pick the same pairs
        rng = random.Random(round_seed(params.seed, r))
        return lambda cands: max_random_pair(cands, p.min_margin, rng)
    if p.strategy == "length_penalised":
        return lambda cands: length_penalised_pair(cands, p.length_penalty, p.min_margin)
    return None  # max_min


def run(params, args) -> None:
    r = args.round
    p = params.round_section(r, "pairs")
    groups = read_groups(layout.samples(r), layout.scores(r))
    pairs = select_pairs(groups, p.min_margin, r, pick=_strategy(params, r, p),
                         source=None if p.strategy == "max_min" else f"rejection_sampling:{r}:{p.strategy}")
    if not pairs:
        raise files.DataError(
            f"{layout.scores(r)}: no prompt produced a pair with margin >= {p.min_margin} "
            f"(fix: lower rounds.{r}.pairs.min_margin or raise generate.n / temperature)"
        )
    out = layout.pairs(r)
    files.write_jsonl(out, pairs)
    if _listwise(Ctx(params, r)):
        rankings = []
        for pid, cands in groups.items():  # samples-file order
            ranks = ranked(cands)
            if ranks:  # a prompt whose responses are all empty has nothing to rank
                rankings.append({"prompt_id": pid, "prompt": cands[0][0]["prompt"], "round": r, "responses": [
                    {"response": x["sample"]["response"], "sample_idx": x["sample"]["sample_idx"],
                     "reward": x["reward"], "rank": x["rank"]} for x in ranks]})
        files.write_jsonl(layout.rankings(r), rankings)
    margins = [x["chosen_score"] - x["rejected_score"] for x in pairs]
    metrics = {"prompts": len(groups), "pairs": len(pairs), "yield": len(pairs) / len(groups),
               "margin_mean": sum(margins) / len(margins)}
    files.write_json(layout.pairs_metrics(r), metrics)
    print(f"pairs {r}: {len(pairs)} pairs from {len(groups)} prompts (mean margin {metrics['margin_mean']:.3f}) -> {out}")
    with stage_run(params.experiment, "pairs", {"pairs": p.model_dump()}, r) as run:
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
