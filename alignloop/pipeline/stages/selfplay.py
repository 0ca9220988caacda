"""Stages `sppo`, `dno`, `inpo` and `lipo`: general-preference and listwise rounds, trained by alignloop's own loss
on transformers' Trainer (alignloop.ml.selfplay; why not TRL is said there).

sppo / dno / inpo (self-play): the round's samples (generate.n per prompt, from the start policy: the iterate pi_t)
are compared pairwise by the preference model — every ordered pair, both orders averaged — and each sample gets its
win-rate against the others of its prompt, an estimate of P(y > pi_t). The best and worst sample by win-rate are the
prompt's pair (skipped below the margin); ``winrates.jsonl`` records all of it. Then one pass of
  * sppo: both log-ratios to the iterate regressed onto eta * (win-rate - 1/2) (SPPO's square loss);
  * dno: DPO's logistic loss against the iterate (DNO's practical batched on-policy version);
  * inpo: INPO's square loss on the log-ratio margin, anchored to the iterate and the SFT reference (weights
    1 - eta*tau and eta*tau).
lipo: every usable response of the pairs stage's rankings.jsonl (ranked by the round's reward), with labels the
rewards min-max scaled per prompt, under LiPO-lambda's listwise loss against the reference (SFT or prev).

The policy starts from the round's start policy. Checkpoints every ``checkpoint_every`` steps make a killed stage
resume (the Trainer restores weights, optimizer, scheduler, RNG and data position; the win-rates are recomputed, the
same numbers: the preference model runs in eval mode on fixed inputs). Outputs: the policy, ``train_metrics.json``,
and for the self-play rounds ``winrates.jsonl``.
"""

from __future__ import annotations

import shutil
import sys

from alignloop.core import files
from alignloop.core.config import PREFERENCE_ALGOS, ConfigError
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import reference_deps, start_deps
from alignloop.pipeline.specs import Ctx, StageSpec, code_paths

_CODE = ("alignloop.ml.selfplay", "alignloop.ml.preference_losses", "alignloop.ml.training", "alignloop.ml.modeling",
         "alignloop.ml.inference", "alignloop.core.selection", "alignloop.core.seeds", "alignloop.pipeline.lineage")


def ref_name(params, r: str) -> str:
    """The round's reference where its loss has one besides the iterate: SFT for inpo, lipo.ref for lipo."""
    algo = params.rounds[r].algo
    if algo == "inpo":
        return "sft"
    if algo == "lipo":
        return params.round_section(r, "lipo").ref
    return "prev"


def _deps(algo: str):
    def deps(c: Ctx) -> list[str]:
        data = [layout.PM, layout.samples(c.round)] if algo in PREFERENCE_ALGOS else [layout.rankings(c.round)]
        return [*start_deps(c.params, c.round), *reference_deps(c.params, c.round, ref_name(c.params, c.round)), *data]
    return deps


def _spec(algo: str, help_: str) -> StageSpec:
    self_play = algo in PREFERENCE_ALGOS
    return StageSpec(
        name=algo, module="alignloop.pipeline.stages.selfplay", scope="round", order=3, args=f"--algo {algo}",
        help=help_, code=_CODE + (("alignloop.ml.preference",) if self_play else ()),
        params=("seed", "model", "train") + (("preference_model.max_length", "score.batch_size") if self_play else ()),
        round_params=("prev", "algo", "start", algo),
        deps=_deps(algo),
        outs=lambda c: ([layout.winrates(c.round)] if self_play else []) + [layout.policy_dir(c.round)],
        metrics=lambda c: [layout.train_metrics(c.round)],
        applies=lambda c: c.rnd.algo == algo, gpu=True,
    )


SPECS = [
    _spec("sppo", "SPPO: log-ratios to the previous iterate regressed onto the preference model's win-rates"),
    _spec("dno", "DNO: contrastive (DPO) update against the previous iterate on win-rate-selected pairs"),
    _spec("inpo", "INPO: no-regret square loss anchored to the previous iterate and the SFT reference"),
    _spec("lipo", "LiPO-lambda: listwise loss over the round's ranked responses"),
]
BY_NAME = {s.name: s for s in SPECS}


def minmax_labels(rewards: list[float]) -> list[float]:
    """A list's rewards scaled to [0, 1] (best 1, worst 0): LiPO's labels. All equal: all 0.5 (nothing to learn)."""
    lo, hi = min(rewards), max(rewards)
    return [0.5] * len(rewards) if hi == lo else [(x - lo) / (hi - lo) for x in rewards]


def self_play_pairs(params, r: str, tokenizer_pm, pm, samples: list[dict], min_margin: float) -> tuple[list[dict], list[dict]]:
    """(winrates rows, one per prompt; pairs (prompt, chosen, rejected, their win-rates)) from the preference model."""
    from alignloop.core.selection import symmetrise, win_rates, winrate_pair
    from alignloop.ml.preference import pair_length, preference_matrices

    groups: dict = {}
    for s in samples:  # file order: prompts in the order generate wrote them, samples by index
        groups.setdefault(s["prompt_id"], []).append(s)
    ids = list(groups)
    raw = preference_matrices(pm, tokenizer_pm, [(groups[i][0]["prompt"], [s["response"] for s in groups[i]]) for i in ids],
                              batch_size=params.score.batch_size, max_length=pair_length(params), desc=f"preferences {r}")
    rows, pairs = [], []
    for pid, mat in zip(ids, raw):
        group = groups[pid]
        win = win_rates(symmetrise(mat))
        pick = winrate_pair(win, min_margin, usable=[bool(s["response"].strip()) for s in group])
        rows.append({"prompt_id": pid, "prompt": group[0]["prompt"], "round": r,
                     "responses": [{"sample_idx": s["sample_idx"], "response": s["response"], "win_rate": w}
                                   for s, w in zip(group, win)],
                     "chosen": group[pick[0]]["sample_idx"] if pick else None,
                     "rejected": group[pick[1]]["sample_idx"] if pick else None})
        if pick:
            (i, j) = pick
            pairs.append({"prompt": group[0]["prompt"], "responses": [group[i]["response"], group[j]["response"]],
                          "target": [win[i], win[j]]})
    return rows, pairs


def listwise_items(path: str) -> list[dict]:
    """LiPO's lists from rankings.jsonl: every ranked response, labels from the rewards; lists with < 2 responses or
    all-equal rewards carry no ordering and are left out."""
    items = []
    for row in files.read_jsonl(path, files.validate_ranking, id_key="prompt_id"):
        resp = row["responses"]
        rewards = [x["reward"] for x in resp]
        if len(resp) >= 2 and max(rewards) > min(rewards):
            items.append({"prompt": row["prompt"], "responses": [x["response"] for x in resp],
                          "target": minmax_labels(rewards)})
    return items


def loss_function(algo: str, c):
    """The round's loss as ``loss_fn(policy, batch) -> (B,)`` for GroupLossTrainer."""
    from alignloop.ml import preference_losses as L

    if algo == "sppo":
        return lambda p, b: L.sppo_loss(p[:, 0], p[:, 1], b["iterate"][:, 0], b["iterate"][:, 1],
                                        b["target"][:, 0], b["target"][:, 1], c.eta)
    if algo == "dno":
        return lambda p, b: L.dno_loss(p[:, 0], p[:, 1], b["iterate"][:, 0], b["iterate"][:, 1], c.beta)
    if algo == "inpo":
        return lambda p, b: L.inpo_loss(p[:, 0], p[:, 1], b["iterate"][:, 0], b["iterate"][:, 1],
                                        b["ref"][:, 0], b["ref"][:, 1], c.eta, c.tau)
    # lipo: list scores are beta x log-ratio to the reference; padded slots are masked out
    return lambda p, b: L.lipo_lambda_loss(c.beta * (p - b["ref"]) * b["valid"], b["target"], b["valid"],
                                           lambda_weights=c.lambda_weights)


def run(params, args) -> None:
    from datasets import Dataset
    from transformers import TrainingArguments

    from alignloop.ml.inference import encode_response, response_logprobs
    from alignloop.ml.modeling import load_causal_lm, load_tokenizer
    from alignloop.ml.selfplay import GroupCollator, GroupLossTrainer
    from alignloop.ml.training import (checkpoint_dir, common_args, lora_config, loss_summary, save_trained,
                                       throughput, train_resumable)
    from alignloop.pipeline.lineage import start_policy
    from alignloop.pipeline.tracking import log_step, stage_run

    r, algo = args.round, args.algo
    spec = BY_NAME[algo]
    if params.rounds[r].algo != algo:
        raise ConfigError(f"round {r} is an algo '{params.rounds[r].algo}' round, not {algo} (fix: run "
                          "`alignloop render` and `dvc repro`, which pick each round's stage)")
    c = params.round_section(r, algo)
    start = start_policy(params, r)
    ref = ref_name(params, r)
    ref_dir = layout.policy_dir("sft") if ref == "sft" else start
    self_play = algo in PREFERENCE_ALGOS
    if lora_config(params) is not None:
        raise ConfigError(f"{algo} rounds train the full model (train.lora.enabled is on; fix: turn it off for this "
                          "round's params, or use dpo rounds, which train LoRA adapters through TRL)")

    # 1. The round's groups: win-rate pairs from the preference model (self-play), or reward-ranked lists (lipo).
    if self_play:
        from alignloop.ml.modeling import load_reward_model

        samples = files.read_jsonl(layout.samples(r), files.validate_sample, id_key=("prompt_id", "sample_idx"))
        pm_tok = load_tokenizer(layout.PM, params.model)
        pm = load_reward_model(layout.PM, params.model)
        rows, items = self_play_pairs(params, r, pm_tok, pm, samples, c.min_margin)
        del pm
        files.write_jsonl(layout.winrates(r), rows)
    else:
        items = listwise_items(layout.rankings(r))
    if not items:
        what = (f"{layout.winrates(r)}: no prompt's best and worst samples differ in win-rate by >= {c.min_margin} "
                f"(fix: lower rounds.{r}.{algo}.min_margin, or raise generate.n / generate.temperature)" if self_play
                else f"{layout.rankings(r)}: no prompt has responses with different rewards (fix: raise generate.n "
                "or generate.temperature)")
        raise files.DataError(what)

    # 2. Anchors, once: the iterate (the start policy, before any step) and the reference, per response.
    tokenizer = load_tokenizer(start, params.model)
    model = load_causal_lm(start, params.model)
    prompts = [it["prompt"] for it in items for _ in it["responses"]]
    texts = [x for it in items for x in it["responses"]]
    kw = dict(batch_size=params.score.batch_size, max_length=params.model.max_length)
    iterate = response_logprobs(model, tokenizer, prompts, texts, desc="iterate logprobs", **kw)
    if ref_dir == start:
        reference = iterate
    else:
        ref_model = load_causal_lm(ref_dir, params.model)
        reference = response_logprobs(ref_model, tokenizer, prompts, texts, desc="reference logprobs", **kw)
        del ref_model
    groups, k = [], 0
    for it in items:
        n = len(it["responses"])
        enc = [encode_response(tokenizer, it["prompt"], x, params.model.max_length) for x in it["responses"]]
        groups.append({"ids": [e[0] for e in enc], "starts": [e[1] for e in enc], "iterate": iterate[k:k + n],
                       "ref": reference[k:k + n], "target": [float(t) for t in it["target"]]})
        k += n

    # 3. Train (resumable).
    ckpt = checkpoint_dir(layout.CKPT_ROOT, f"{algo}_{r}", params, {algo: c.model_dump(), "seed": params.seed, "round": r},
                          [start, ref_dir, *([layout.PM, layout.samples(r)] if self_play else [layout.rankings(r)])],
                          code_paths(spec, params, r), hash_cache=layout.HASH_CACHE)
    targs = common_args(params, lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, checkpoint=ckpt,
                        checkpoint_every=c.checkpoint_every)
    targs.pop("max_length")  # a TRL field; responses were cut to model.max_length when encoded
    targs["gradient_checkpointing"] = False  # the loop runs the plain model forward; nothing TRL would set up for it
    trainer = GroupLossTrainer(model=model, args=TrainingArguments(**targs, remove_unused_columns=False),
                               train_dataset=Dataset.from_list(groups), data_collator=GroupCollator(tokenizer.pad_token_id),
                               processing_class=tokenizer, loss_fn=loss_function(algo, c))
    result = train_resumable(trainer, f"{algo} {r}", log=log_step())  # curves stream into the stage's MLflow run
    out = layout.policy_dir(r)
    stats = throughput(trainer, result)
    if not save_trained(trainer, tokenizer, out):
        return
    metrics = {"groups": len(items), "responses": len(texts), "train_runtime_s": result.metrics["train_runtime"],
               **loss_summary(trainer.state.log_history), **stats}
    if self_play:
        metrics.update({"prompts": len(rows), "pairs": len(items),
                        "chosen_win_rate_mean": sum(it["target"][0] for it in items) / len(items),
                        "rejected_win_rate_mean": sum(it["target"][1] for it in items) / len(items)})
    files.write_json(layout.train_metrics(r), metrics)
    shutil.rmtree(ckpt.parent, ignore_errors=True)  # the policy is saved: nothing left to resume
    print(f"{algo} {r}: {len(items)} {'pairs' if self_play else 'lists'}, loss "
          f"{metrics.get('loss_first', float('nan')):.4f} -> {metrics.get('loss_last', float('nan')):.4f}; saved {out}/")
    with stage_run(params.experiment, algo, {algo: c.model_dump(), "prev": params.rounds[r].prev}, r) as run_:
        run_.log_metrics(metrics)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    algo = argv[argv.index("--algo") + 1] if "--algo" in argv and argv.index("--algo") + 1 < len(argv) else "sppo"
    if algo not in BY_NAME:
        print(f"error: --algo {algo}: not one of {sorted(BY_NAME)}", file=sys.stderr)
        return 2
    return stage_main(BY_NAME[algo], run, options=(("--algo", "which round kind: sppo, dno, inpo or lipo"),),
                      argv=argv)


if __name__ == "__main__":
    sys.exit(main())
