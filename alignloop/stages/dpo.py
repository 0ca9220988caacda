"""Stage `dpo`: one DPO round (TRL DPOTrainer) on the round's rejection-sampled pairs (iterative DPO), or on the
curated training preferences (``dpo.pairs: curated``, offline DPO).

The policy warm-starts from the round's ``prev`` policy; the reference is the SFT policy (default,
``dpo.ref: sft``) or ``prev`` (``dpo.ref: prev``). Both are loaded from their saved directories, so
the reference is exactly the model that produced ``prev``'s outputs.
"""

from __future__ import annotations

import sys

from alignloop import io
from alignloop.modeling import load_causal_lm, load_tokenizer
from alignloop.stages._cli import stage_main
from alignloop.stages._train import common_args, log_curves, loss_summary
from alignloop.stages.reward_model import to_conversational
from alignloop.lineage import start_policy
from alignloop.tracking import stage_run

CURATED = "data/curated/prefs/train.jsonl"


def run(params, args) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    r = args.round
    d = params.round_section(r, "dpo")
    prev = start_policy(params, r)
    ref_dir = params.policy_dir("sft") if d.ref == "sft" else prev
    source = f"data/rounds/{r}/pairs.jsonl" if d.pairs == "sampled" else CURATED
    pairs = io.read_jsonl(source, io.validate_pair, id_key="id")
    if d.max_pairs is not None and len(pairs) > d.max_pairs:
        import random

        # A seeded subset (per round), in file order so the trainer's own shuffling stays the only reordering.
        keep = set(random.Random(params.seed * 1000 + list(params.rounds).index(r)).sample(range(len(pairs)), d.max_pairs))
        pairs = [p for i, p in enumerate(pairs) if i in keep]
    tokenizer = load_tokenizer(prev, params.model)
    model = load_causal_lm(prev, params.model)
    ref = load_causal_lm(ref_dir, params.model)
    config = DPOConfig(**common_args(params, lr=d.lr, epochs=d.epochs, batch_size=d.batch_size),
                       beta=d.beta, loss_type=[d.loss_type], label_smoothing=d.label_smoothing)
    trainer = DPOTrainer(model=model, ref_model=ref, args=config,
                         train_dataset=Dataset.from_list(to_conversational(pairs)), processing_class=tokenizer)
    result = trainer.train()
    out = f"data/rounds/{r}/policy"
    with io.atomic_dir(out) as tmp:
        trainer.model.save_pretrained(tmp)  # safetensors weights + config; no pickled training_args.bin
        tokenizer.save_pretrained(tmp)
    hist = trainer.state.log_history
    metrics = {"pairs": len(pairs), "train_runtime_s": result.metrics["train_runtime"], **loss_summary(hist)}
    for key in ("rewards/accuracies", "rewards/margins"):
        vals = [h[key] for h in hist if key in h]
        if vals:
            metrics[key.replace("/", "_") + "_last"] = vals[-1]
    io.write_json(f"data/rounds/{r}/train_metrics.json", metrics)
    print(f"dpo {r}: {len(pairs)} {d.pairs} pairs, beta {d.beta}, loss {metrics.get('loss_first', float('nan')):.3f} -> "
          f"{metrics.get('loss_last', float('nan')):.3f}; saved {out}/")
    with stage_run(params.experiment, "dpo", {"dpo": d.model_dump(), "prev": params.rounds[r].prev}, r) as run:
        log_curves(run, hist, ("loss", "rewards/accuracies", "rewards/margins", "learning_rate"))
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main("dpo", run, needs_round=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
