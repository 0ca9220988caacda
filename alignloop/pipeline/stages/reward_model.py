"""Stages `reward_model` and `judge_model`: Bradley-Terry reward models (TRL RewardTrainer).

`reward_model` trains on the curated train pairs; the rounds optimise against it. `judge_model` (when
judge_model.enabled) trains the same way on the judge split only (prefs/judge.jsonl, prompts no other stage sees),
with its own seed and optionally its own backbone; only evaluation reads it, so it is a judge the policy was never
optimised against.

The backbone is the SFT policy (default) or the base model, with a fresh scalar head. Held-out pair accuracy
is measured on prefs/eval.jsonl by scoring each side the way the score stage will (chat-rendered full turn).
On the embedded task the accuracy against the hidden gold ordering is reported too: it is what the policy
will actually be optimised against (on its intransitive variant, the ordering of the annotators' true preference
P_gold, which no scalar reward can match on every pair).
"""

from __future__ import annotations

import shutil
import sys

from pathlib import Path

from alignloop.core import files
from alignloop.core.metrics import pair_accuracy
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import reward_model_dirs
from alignloop.pipeline.specs import Ctx, StageSpec, code_paths
from alignloop.pipeline.tracking import log_step, stage_run

TRAIN, EVAL, JUDGE_TRAIN = layout.PREFS_TRAIN, layout.PREFS_EVAL, layout.PREFS_JUDGE


def _init(ctx: Ctx) -> str:
    return layout.SFT if ctx.params.reward_model.init == "sft" else layout.BASE


SPECS = [StageSpec(
    name="reward_model", module="alignloop.pipeline.stages.reward_model", scope="before", order=4,
    help="TRL RewardTrainer (Bradley-Terry), one model per ensemble member; held-out pair accuracy",
    code=("alignloop.ml.training", "alignloop.ml.modeling", "alignloop.ml.inference", "alignloop.core.metrics"),
    extra_code=lambda c: ((["alignloop.core.synthetic"] if c.params.data.source == "embedded" else [])
                          + (["alignloop.core.ensemble", "alignloop.pipeline.lineage"] if c.params.reward_model.ensemble > 1
                             else [])),
    params=("seed", "model", "train", "reward_model", "score.batch_size", "data.source"), extra_params=Ctx.gold_preference_keys,
    deps=lambda c: [_init(c), TRAIN, EVAL], outs=lambda c: reward_model_dirs(c.params),
    metrics=lambda c: [layout.RM_METRICS, layout.RM_HELDOUT], gpu=True,
), StageSpec(
    name="judge_model", module="alignloop.pipeline.stages.reward_model", scope="before", order=4, args="--judge",
    help="held-out judge: a reward model on the judge split only, own seed (and backbone); evaluation alone reads it",
    code=("alignloop.ml.training", "alignloop.ml.modeling", "alignloop.ml.inference", "alignloop.core.metrics"),
    extra_code=lambda c: ["alignloop.core.synthetic"] if c.params.data.source == "embedded" else [],
    params=("seed", "model", "train", "judge_model", "score.batch_size", "data.source"), extra_params=Ctx.gold_preference_keys,
    deps=lambda c: [*_judge_init_deps(c), JUDGE_TRAIN, EVAL], outs=lambda c: [layout.JUDGE],
    metrics=lambda c: [layout.JUDGE_METRICS, layout.JUDGE_HELDOUT], gpu=True,
    applies=lambda c: c.params.judge_model.enabled,
)]


def _judge_init(params) -> str:
    j = params.judge_model
    return j.backbone or (layout.SFT if j.init == "sft" else layout.BASE)


def _judge_init_deps(ctx: Ctx) -> list[str]:
    """The judge's backbone, when it is a directory DVC can track (a hub id is pinned by its own revision)."""
    init = _judge_init(ctx.params)
    return [init] if not ctx.params.judge_model.backbone or Path(init).is_dir() else []


def gold_accuracy(rows: list[dict], chosen: list[float], rejected: list[float], task) -> float:
    """Share of pairs the scores order as the embedded task's gold does (pairs gold cannot order are skipped; 0 when
    none is left). Gold orders a pair by the gold reward, or on the intransitive variant (task.intransitive > 0) by the
    annotators' true preference: chosen first when P_gold(chosen > rejected) > 0.5."""
    from alignloop.core.synthetic import gold_preference, gold_reward

    if task.intransitive > 0:
        p = [gold_preference(r["prompt"], r["chosen"], r["rejected"], task.annotator_temperature, task.intransitive)
             for r in rows]
        agree = [(c > r) == (pc > 0.5) for c, r, pc in zip(chosen, rejected, p) if pc != 0.5]
    else:
        gold_c = [gold_reward(r["prompt"], r["chosen"]) for r in rows]
        gold_r = [gold_reward(r["prompt"], r["rejected"]) for r in rows]
        agree = [(c > r) == (gc > gr) for c, r, gc, gr in zip(chosen, rejected, gold_c, gold_r) if gc != gr]
    return sum(agree) / len(agree) if agree else 0.0


def heldout_accuracy(rm, tokenizer, rows: list[dict], params) -> tuple[dict[str, float], tuple[list, list]]:
    """Held-out pair accuracy (and vs gold on the embedded task); also the chosen/rejected scores."""
    from alignloop.ml.inference import reward_scores

    if not rows:
        return {}, ([], [])
    prompts = [r["prompt"] for r in rows]
    kw = dict(batch_size=params.score.batch_size, max_length=params.model.max_length)
    chosen = reward_scores(rm, tokenizer, prompts, [r["chosen"] for r in rows], desc="eval chosen", **kw)
    rejected = reward_scores(rm, tokenizer, prompts, [r["rejected"] for r in rows], desc="eval rejected", **kw)
    out = {"eval_pairs": len(rows), "eval_accuracy": pair_accuracy(chosen, rejected)}
    if params.data.source == "embedded":
        out["eval_gold_accuracy"] = gold_accuracy(rows, chosen, rejected, params.task)
    return out, (chosen, rejected)


def train_member(params, seed: int, train_rows: list[dict], init: str, section=None, spec=None, key=None,
                 curve: str = "train."):
    """One Bradley-Terry reward model, trained under ``seed`` (head init and data order) with ``section``'s
    settings (reward_model by default; judge_model for the judge), checkpointed under ``key``; its training logs
    stream into the stage's MLflow run under the ``curve`` prefix."""
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from alignloop.ml.modeling import load_reward_model, load_tokenizer
    from alignloop.ml.training import checkpoint_dir, common_args, lora_config, to_conversational, train_resumable

    tokenizer = load_tokenizer(init, params.model)
    # The score head is freshly initialised inside from_pretrained, before the trainer seeds anything:
    # seed here or two runs of the same stage train different reward models.
    torch.manual_seed(seed)
    model = load_reward_model(init, params.model)  # fresh 1-output score head on the backbone
    model.config.pad_token_id = tokenizer.pad_token_id
    c, spec = section or params.reward_model, spec or SPECS[0]
    data = JUDGE_TRAIN if spec.name == "judge_model" else TRAIN
    ckpt = checkpoint_dir(layout.CKPT_ROOT, key or f"reward_model/seed{seed}", params,
                          {spec.name: c.model_dump(), "seed": seed}, [init, data], code_paths(spec, params), hash_cache=layout.HASH_CACHE)
    config = RewardConfig(**{**common_args(params, lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, checkpoint=ckpt,
                                           checkpoint_every=c.checkpoint_every),
                             "seed": seed, "data_seed": seed})
    trainer = RewardTrainer(model=model, args=config, train_dataset=Dataset.from_list(to_conversational(train_rows)),
                            processing_class=tokenizer, peft_config=lora_config(params, reward_model=True))
    result = train_resumable(trainer, f"reward_model seed {seed}", log=log_step(curve))
    return trainer, tokenizer, result


def run_judge(params) -> None:
    from alignloop.ml.training import loss_summary, save_trained, throughput

    j = params.judge_model
    rows = files.read_jsonl(JUDGE_TRAIN, files.validate_pair, id_key="id")
    eval_rows = files.read_jsonl(EVAL, files.validate_pair, id_key="id", allow_empty=True)
    seed = params.seed + j.seed_offset
    trainer, tokenizer, result = train_member(params, seed, rows, _judge_init(params), j, SPECS[1], f"judge_model/seed{seed}")
    heldout, _ = heldout_accuracy(trainer.model, tokenizer, eval_rows, params)
    metrics = {"train_pairs": len(rows), "seed": seed, "backbone": _judge_init(params),
               "train_runtime_s": result.metrics["train_runtime"], **loss_summary(trainer.state.log_history),
               **throughput(trainer, result)}
    if not save_trained(trainer, tokenizer, layout.JUDGE):
        return
    files.write_json(layout.JUDGE_METRICS, metrics)
    files.write_json(layout.JUDGE_HELDOUT, heldout)
    shutil.rmtree(Path(layout.CKPT_ROOT) / "judge_model", ignore_errors=True)
    with stage_run(params.experiment, "judge_model", params.model_dump(include={"judge_model", "model", "seed"})) as run_:
        run_.log_metrics({k: v for k, v in {**metrics, **heldout}.items() if k != "backbone"})
    print(f"judge_model: {len(rows)} judge-split pairs, seed {seed}, held-out accuracy "
          f"{heldout.get('eval_accuracy', float('nan')):.3f}"
          + (f", vs gold {heldout['eval_gold_accuracy']:.3f}" if "eval_gold_accuracy" in heldout else "")
          + f"; saved {layout.JUDGE}")


def run(params, args) -> None:
    if args.judge:
        return run_judge(params)
    from alignloop.core.ensemble import aggregate
    from alignloop.ml.training import loss_summary, save_trained, throughput

    init = _init(Ctx(params))
    train_rows = files.read_jsonl(TRAIN, files.validate_pair, id_key="id")
    eval_rows = files.read_jsonl(EVAL, files.validate_pair, id_key="id", allow_empty=True)
    outs = reward_model_dirs(params)
    metrics: dict = {"train_pairs": len(train_rows), "ensemble": len(outs)}
    # Held-out accuracy goes to its own file: evaluate reads it, and it depends on the weights alone, so a resumed
    # run (same weights, other runtimes in the metrics file) does not make every evaluation rerun.
    heldout: dict = {}
    member_eval: list[tuple[list[float], list[float]]] = []
    member_logs: list[dict] = []
    for k, out in enumerate(outs):
        # Members differ only by seed (head init, data order): the ensemble of "Reward Model Ensembles Help
        # Mitigate Overoptimization". Member 0 is exactly the single reward model of ensemble: 1.
        trainer, tokenizer, result = train_member(params, params.seed + k, train_rows, init,
                                                  curve="train." if k == 0 else f"train.member{k}.")
        acc, scores = heldout_accuracy(trainer.model, tokenizer, eval_rows, params)
        member_eval.append(scores)
        m = {"train_runtime_s": result.metrics["train_runtime"], **loss_summary(trainer.state.log_history),
             **throughput(trainer, result)}
        metrics.update(m if k == 0 else {f"member{k}_{key}": v for key, v in m.items()})
        heldout.update(acc if k == 0 else {f"member{k}_{key}": v for key, v in acc.items()})
        m = {**m, **acc}  # the member's MLflow run shows both
        main = save_trained(trainer, tokenizer, out)  # merges LoRA; False in accelerate workers but the main one
        member_logs.append(m if k == 0 else {f"member{k}_{key}": v for key, v in m.items()})
    if len(outs) > 1 and eval_rows:  # the members' mean (score.aggregate is the score stage's business, not ours)
        chosen = aggregate([c for c, _ in member_eval], "mean")
        rejected = aggregate([r for _, r in member_eval], "mean")
        heldout["ensemble_eval_accuracy"] = pair_accuracy(chosen, rejected)
    if not main:  # accelerate worker other than the main process: outputs and MLflow runs are the main one's
        return
    files.write_json(layout.RM_METRICS, metrics)
    files.write_json(layout.RM_HELDOUT, heldout)
    shutil.rmtree(Path(layout.CKPT_ROOT) / "reward_model", ignore_errors=True)  # every member is saved: nothing left to resume
    # One MLflow run for the stage execution (its members' curves streamed into it as train.* / train.member<k>.*).
    with stage_run(params.experiment, "reward_model", params.model_dump(include={"reward_model", "model", "seed"})) as run_:
        for m in member_logs:
            run_.log_metrics(m)
    print(f"reward_model: {len(outs)} model(s) on {len(train_rows)} pairs, held-out accuracy "
          f"{heldout.get('eval_accuracy', float('nan')):.3f}"
          + (f", vs gold {heldout['eval_gold_accuracy']:.3f}" if "eval_gold_accuracy" in heldout else "")
          + (f", ensemble {heldout['ensemble_eval_accuracy']:.3f}" if "ensemble_eval_accuracy" in heldout else "")
          + f"; saved {', '.join(outs)}")


def main(argv=None) -> int:
    judge = "--judge" in (sys.argv[1:] if argv is None else argv)
    return stage_main(SPECS[1] if judge else SPECS[0], run,
                      flags=(("--judge", "train the held-out judge model (stage judge_model)"),), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
