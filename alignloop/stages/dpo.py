"""Stage `dpo`: one DPO round (TRL DPOTrainer) on the round's rejection-sampled pairs (iterative DPO), or on the
curated training preferences (``dpo.pairs: curated``, offline DPO).

The policy warm-starts from the round's ``prev`` policy; the reference is the SFT policy (default,
``dpo.ref: sft``) or ``prev`` (``dpo.ref: prev``). Both are loaded from their saved directories, so
the reference is exactly the model that produced ``prev``'s outputs.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from alignloop import io
from alignloop.modeling import load_causal_lm, load_tokenizer
from alignloop.stages._cli import stage_main
from alignloop.stages._train import (checkpoint_dir, common_args, log_curves, lora_config, loss_summary, save_trained,
                                     throughput, train_resumable)
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
    peft = lora_config(params)
    # When the reference is the start policy itself, TRL needs no second copy: with LoRA the adapter-disabled policy
    # is it, and precomputed log-probs come from the policy before its first step. Otherwise (and always when neither
    # is on, the default) the reference is loaded from its directory.
    own_ref = Path(ref_dir).resolve() == Path(prev).resolve() and (peft is not None or d.precompute_ref_log_probs)
    ref = None if own_ref else load_causal_lm(ref_dir, params.model)
    ckpt = checkpoint_dir(f"dpo_{r}", params, {"dpo": d.model_dump(), "seed": params.seed, "round": r},
                          [prev, ref_dir, source, __file__])
    config = DPOConfig(**common_args(params, lr=d.lr, epochs=d.epochs, batch_size=d.batch_size, checkpoint=ckpt,
                                     checkpoint_every=d.checkpoint_every),
                       beta=d.beta, loss_type=[d.loss_type], label_smoothing=d.label_smoothing,
                       precompute_ref_log_probs=d.precompute_ref_log_probs)  # False: TRL's default
    trainer = DPOTrainer(model=model, ref_model=ref, args=config, peft_config=peft,
                         train_dataset=Dataset.from_list(to_conversational(pairs)), processing_class=tokenizer)
    if d.precompute_ref_log_probs and ref is not None:
        # The reference log-probs are columns of the training set now and TRL reads them from there; drop its copy
        # of the reference so training has that GPU memory (TRL itself only frees it under FSDP).
        trainer.ref_model = ref = None
    result = train_resumable(trainer, f"dpo {r}")
    out = f"data/rounds/{r}/policy"
    stats = throughput(trainer, result)
    if not save_trained(trainer, tokenizer, out):  # merges LoRA; False in accelerate workers other than the main one
        return
    hist = trainer.state.log_history
    metrics = {"pairs": len(pairs), "train_runtime_s": result.metrics["train_runtime"], **loss_summary(hist), **stats,
               "reference_forward_in_training": not d.precompute_ref_log_probs}
    for key in ("rewards/accuracies", "rewards/margins"):
        vals = [h[key] for h in hist if key in h]
        if vals:
            metrics[key.replace("/", "_") + "_last"] = vals[-1]
    io.write_json(f"data/rounds/{r}/train_metrics.json", metrics)
    shutil.rmtree(ckpt.parent, ignore_errors=True)  # the policy is saved: nothing left to resume
    print(f"dpo {r}: {len(pairs)} {d.pairs} pairs, beta {d.beta}, loss {metrics.get('loss_first', float('nan')):.3f} -> "
          f"{metrics.get('loss_last', float('nan')):.3f}; saved {out}/")
    with stage_run(params.experiment, "dpo", {"dpo": d.model_dump(), "prev": params.rounds[r].prev}, r) as run:
        log_curves(run, hist, ("loss", "rewards/accuracies", "rewards/margins", "learning_rate"))
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main("dpo", run, needs_round=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
