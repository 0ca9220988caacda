"""Stage `pairs`: best-vs-worst preference pairs from a round's scored samples.

With ``pairs.listwise`` it also writes ``rankings.jsonl``: per prompt, every usable response ranked best first
(equal rewards share a rank), the input of listwise losses.
"""

from __future__ import annotations

import sys

from alignloop import io
from alignloop.pairs import group_by_prompt, select_pairs
from alignloop.selection import length_penalised_pair, max_random_pair, ranked
from alignloop.stages._cli import stage_main
from alignloop.tracking import stage_run


def _strategy(params, r: str, p):
    import random

    if p.strategy == "max_random":  # seeded per round; draws in prompt-id order, so reruns pick the same pairs
        rng = random.Random(params.seed * 1000 + list(params.rounds).index(r))
        return lambda cands: max_random_pair(cands, p.min_margin, rng)
    if p.strategy == "length_penalised":
        return lambda cands: length_penalised_pair(cands, p.length_penalty, p.min_margin)
    return None  # max_min


def read_groups(r: str) -> dict:
    """A round's samples joined with their scores, by prompt (alignloop.pairs.group_by_prompt); a sample without a
    score is a DataError naming the scores file."""
    samples = io.read_jsonl(f"data/rounds/{r}/samples.jsonl", io.validate_sample, id_key=io.SAMPLE_KEY)
    scores = io.read_jsonl(f"data/rounds/{r}/scores.jsonl", io.validate_score, id_key=io.SAMPLE_KEY)
    try:
        return group_by_prompt(samples, scores)
    except KeyError as exc:
        raise io.DataError(f"data/rounds/{r}/scores.jsonl: {exc.args[0]}") from None


def run(params, args) -> None:
    r = args.round
    p = params.round_section(r, "pairs")
    groups = read_groups(r)
    pairs = select_pairs(groups, p.min_margin, r, pick=_strategy(params, r, p),
                         source=None if p.strategy == "max_min" else f"rejection_sampling:{r}:{p.strategy}")
    if not pairs:
        raise io.DataError(
            f"data/rounds/{r}/scores.jsonl: no prompt produced a pair with margin >= {p.min_margin} "
            f"(fix: lower rounds.{r}.pairs.min_margin or raise generate.n / temperature)"
        )
    out = f"data/rounds/{r}/pairs.jsonl"
    io.write_jsonl(out, pairs)
    if p.listwise:
        rankings = []
        for pid, cands in groups.items():  # samples-file order
            ranks = ranked(cands)
            if ranks:  # a prompt whose responses are all empty has nothing to rank
                rankings.append({"prompt_id": pid, "prompt": cands[0][0]["prompt"], "round": r, "responses": [
                    {"response": x["sample"]["response"], "sample_idx": x["sample"]["sample_idx"],
                     "reward": x["reward"], "rank": x["rank"]} for x in ranks]})
        io.write_jsonl(f"data/rounds/{r}/rankings.jsonl", rankings)
    margins = [x["chosen_score"] - x["rejected_score"] for x in pairs]
    metrics = {"prompts": len(groups), "pairs": len(pairs), "yield": len(pairs) / len(groups),
               "margin_mean": sum(margins) / len(margins)}
    io.write_json(f"data/rounds/{r}/pairs_metrics.json", metrics)
    print(f"pairs {r}: {len(pairs)} pairs from {len(groups)} prompts (mean margin {metrics['margin_mean']:.3f}) -> {out}")
    with stage_run(params.experiment, "pairs", {"pairs": p.model_dump()}, r) as run:
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main("pairs", run, needs_round=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
