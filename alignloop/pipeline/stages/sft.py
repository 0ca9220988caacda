"""Stage `sft`: supervised fine-tuning of the base model on curated demonstrations (TRL SFTTrainer).

Loss is on the response tokens only (prompt-completion data), rendered with the tokenizer's chat template
so generation later sees the same prompt tokens.
"""

from __future__ import annotations

import shutil
import sys

from alignloop.core import files
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.specs import StageSpec, code_paths
from alignloop.pipeline.tracking import log_step, stage_run

BASE, DATA, OUT = layout.BASE, layout.SFT_DATA, layout.SFT
SPECS = [StageSpec(
    name="sft", module="alignloop.pipeline.stages.sft", scope="before", order=3, help="TRL SFTTrainer on the curated demonstrations",
    code=("alignloop.ml.training", "alignloop.ml.modeling"), params=("seed", "model", "train", "sft"),
    deps=lambda c: [BASE, DATA], outs=lambda c: [OUT], metrics=lambda c: [layout.SFT_METRICS], gpu=True,
)]


def run(params, args) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignloop.ml.modeling import as_messages, load_causal_lm, load_tokenizer
    from alignloop.ml.training import (checkpoint_dir, common_args, lora_config, loss_summary, save_trained,
                                       throughput, train_resumable)

    rows = files.read_jsonl(DATA, files.validate_sft, id_key="id")
    dataset = Dataset.from_list([
        {"prompt": as_messages(r["prompt"]), "completion": [{"role": "assistant", "content": r["response"]}]}
        for r in rows
    ])
    tokenizer = load_tokenizer(BASE, params.model)
    model = load_causal_lm(BASE, params.model)
    c = params.sft
    ckpt = checkpoint_dir(layout.CKPT_ROOT, "sft", params, params.model_dump(include={"sft", "seed"}), [BASE, DATA],
                          code_paths(SPECS[0], params), hash_cache=layout.HASH_CACHE)
    config = SFTConfig(**common_args(params, lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, warmup_ratio=c.warmup_ratio,
                                     checkpoint=ckpt, checkpoint_every=c.checkpoint_every),
                       completion_only_loss=True, packing=c.packing)  # packing False: TRL's default
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(params))  # None unless train.lora.enabled
    result = train_resumable(trainer, "sft", log=log_step())  # curves stream into the stage's MLflow run
    stats = throughput(trainer, result)
    if not save_trained(trainer, tokenizer, OUT):  # merges LoRA; False in accelerate workers other than the main one
        return
    metrics = {"train_examples": len(rows), "train_runtime_s": result.metrics["train_runtime"],
               **loss_summary(trainer.state.log_history), **stats}
    files.write_json(layout.SFT_METRICS, metrics)
    shutil.rmtree(ckpt.parent, ignore_errors=True)  # the model is saved: nothing left to resume
    print(f"sft: {len(rows)} examples, loss {metrics.get('loss_first', float('nan')):.3f} -> "
          f"{metrics.get('loss_last', float('nan')):.3f}; saved {OUT}/")
    with stage_run(params.experiment, "sft", params.model_dump(include={"sft", "model", "seed"})) as run:
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
