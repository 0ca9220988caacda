"""Stage `preference_model`: a pairwise preference model P(a > b | x) (alignloop.ml.preference) for the self-play
rounds (sppo, dno, inpo).

Trained on the curated train pairs in both orders with the label flipped, from the SFT policy (default), the base
model or another backbone, with a fresh one-logit head. Held-out metrics on prefs/eval.jsonl: accuracy of the
symmetrised probability, of each raw order, the symmetry error mean |P(a > b) + P(b > a) - 1|, and on the embedded
task the agreement with the true preference P_gold (which may be intransitive: task.intransitive).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from alignloop.core import files
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.specs import Ctx, StageSpec, code_paths
from alignloop.pipeline.tracking import log_step, stage_run

TRAIN, EVAL = layout.PREFS_TRAIN, layout.PREFS_EVAL


def _init(params) -> str:
    c = params.preference_model
    return c.backbone or (layout.SFT if c.init == "sft" else layout.BASE)


def _init_deps(ctx: Ctx) -> list[str]:
    """The backbone, when it is a directory DVC can track (a hub id is pinned by its own revision)."""
    init = _init(ctx.params)
    return [init] if not ctx.params.preference_model.backbone or Path(init).is_dir() else []


SPECS = [StageSpec(
    name="preference_model", module="alignloop.pipeline.stages.preference_model", scope="before", order=4,
    help="pairwise preference model P(a > b | x) (one pass over prompt and both responses); held-out accuracy, symmetry",
    code=("alignloop.ml.preference", "alignloop.ml.training", "alignloop.ml.modeling", "alignloop.ml.inference",
          "alignloop.core.selection"),
    extra_code=lambda c: ["alignloop.core.synthetic"] if c.params.data.source == "embedded" else [],
    params=("seed", "model", "train", "preference_model", "score.batch_size", "data.source"),
    extra_params=Ctx.gold_preference_keys,
    deps=lambda c: [*_init_deps(c), TRAIN, EVAL], outs=lambda c: [layout.PM],
    metrics=lambda c: [layout.PM_METRICS, layout.PM_HELDOUT], gpu=True,
    applies=lambda c: c.params.preference_model.enabled,
)]


def gold_function(params):
    """P_gold(a > b) on the embedded task (evaluation-only knowledge: held-out metrics), else None."""
    if params.data.source != "embedded":
        return None
    from alignloop.core.synthetic import gold_preference

    t = params.task
    return lambda prompt, a, b: gold_preference(prompt, a, b, t.annotator_temperature, t.intransitive)


def run(params, args) -> None:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from alignloop.ml.modeling import load_reward_model, load_tokenizer
    from alignloop.ml.preference import (PairCollator, as_preference_model, heldout_metrics, pair_length,
                                         pair_training_rows)
    from alignloop.ml.training import (checkpoint_dir, common_args, lora_config, loss_summary, save_trained,
                                       throughput, train_resumable)

    c, init = params.preference_model, _init(params)
    pairs = files.read_jsonl(TRAIN, files.validate_pair, id_key="id")
    eval_rows = files.read_jsonl(EVAL, files.validate_pair, id_key="id", allow_empty=True)
    tokenizer = load_tokenizer(init, params.model)
    length = pair_length(params)
    rows = pair_training_rows(pairs, tokenizer, length)
    # The head is freshly initialised inside from_pretrained, before the Trainer seeds anything: seed here or two
    # runs of the stage train different models.
    torch.manual_seed(params.seed)
    model = as_preference_model(load_reward_model(init, params.model), tokenizer)
    peft = lora_config(params, reward_model=True)  # SEQ_CLS: the fresh head trains in full
    if peft is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft)
    ckpt = checkpoint_dir(layout.CKPT_ROOT, "preference_model", params, {"preference_model": c.model_dump(),
                          "seed": params.seed}, [init, TRAIN], code_paths(SPECS[0], params), hash_cache=layout.HASH_CACHE)
    targs = common_args(params, lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, checkpoint=ckpt,
                        checkpoint_every=c.checkpoint_every)
    targs.pop("max_length")  # a TRL field; the pairs are cut to length when encoded
    trainer = Trainer(model=model, args=TrainingArguments(**targs, remove_unused_columns=False),
                      train_dataset=Dataset.from_list(rows), data_collator=PairCollator(tokenizer.pad_token_id),
                      processing_class=tokenizer)
    result = train_resumable(trainer, "preference_model", log=log_step())  # curves stream into the MLflow run
    heldout = heldout_metrics(trainer.model, tokenizer, eval_rows, batch_size=params.score.batch_size,
                              max_length=length, gold=gold_function(params))
    metrics = {"train_pairs": len(pairs), "train_rows": len(rows), "backbone": init,
               "train_runtime_s": result.metrics["train_runtime"], **loss_summary(trainer.state.log_history),
               **throughput(trainer, result)}
    if not save_trained(trainer, tokenizer, layout.PM):  # merges LoRA; False in accelerate workers but the main one
        return
    files.write_json(layout.PM_METRICS, metrics)
    files.write_json(layout.PM_HELDOUT, heldout)
    shutil.rmtree(Path(layout.CKPT_ROOT) / "preference_model", ignore_errors=True)  # saved: nothing left to resume
    with stage_run(params.experiment, "preference_model",
                   params.model_dump(include={"preference_model", "model", "seed"})) as run_:
        run_.log_metrics({k: v for k, v in {**metrics, **heldout}.items() if k != "backbone"})
    print(f"preference_model: {len(pairs)} pairs x 2 orders, loss {metrics.get('loss_first', float('nan')):.3f} -> "
          f"{metrics.get('loss_last', float('nan')):.3f}; held-out accuracy {heldout.get('eval_accuracy', float('nan')):.3f}"
          + (f", vs gold {heldout['eval_gold_accuracy']:.3f}" if "eval_gold_accuracy" in heldout else "")
          + f", symmetry error {heldout.get('symmetry_error', float('nan')):.3f}; saved {layout.PM}")


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
