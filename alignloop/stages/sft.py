"""Stage `sft`: supervised fine-tuning of the base model on curated demonstrations (TRL SFTTrainer).

Loss is on the response tokens only (prompt-completion data), rendered with the tokenizer's chat template
so generation later sees the same prompt tokens.
"""

from __future__ import annotations

import sys

from alignloop import io
from alignloop.modeling import as_messages, load_causal_lm, load_tokenizer
from alignloop.stages._cli import stage_main
from alignloop.stages._train import common_args, log_curves, loss_summary
from alignloop.tracking import stage_run

BASE = "data/models/base"
DATA = "data/curated/sft.jsonl"
OUT = "data/models/sft"


def run(params, args) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = io.read_jsonl(DATA, io.validate_sft, id_key="id")
    dataset = Dataset.from_list([
        {"prompt": as_messages(r["prompt"]), "completion": [{"role": "assistant", "content": r["response"]}]}
        for r in rows
    ])
    tokenizer = load_tokenizer(BASE, params.model)
    model = load_causal_lm(BASE, params.model)
    c = params.sft
    config = SFTConfig(**common_args(params, lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, warmup_ratio=c.warmup_ratio),
                       completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    with io.atomic_dir(OUT) as tmp:
        trainer.model.save_pretrained(tmp)  # safetensors weights + config; no pickled training_args.bin
        tokenizer.save_pretrained(tmp)
    metrics = {"train_examples": len(rows), "train_runtime_s": result.metrics["train_runtime"],
               **loss_summary(trainer.state.log_history)}
    io.write_json(f"{OUT}.metrics.json", metrics)
    print(f"sft: {len(rows)} examples, loss {metrics.get('loss_first', float('nan')):.3f} -> "
          f"{metrics.get('loss_last', float('nan')):.3f}; saved {OUT}/")
    with stage_run(params.experiment, "sft", params.model_dump(include={"sft", "model", "seed"})) as run:
        log_curves(run, trainer.state.log_history, ("loss", "learning_rate", "mean_token_accuracy"))
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main("sft", run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
