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

from alignloop.core import files
from alignloop.core.seeds import round_seed
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import reference_deps, start_deps, start_policy
from alignloop.pipeline.specs import Ctx, StageSpec, code_paths
from alignloop.pipeline.tracking import log_step, stage_run


def _source(ctx: Ctx) -> str:
    """The round's pairs: its own rejection-sampled ones, or the curated training preferences (offline DPO)."""
    return layout.pairs(ctx.round) if ctx.section("dpo").pairs == "sampled" else layout.PREFS_TRAIN


SPECS = [StageSpec(
    name="dpo", module="alignloop.pipeline.stages.dpo", scope="round", order=3, help="TRL DPOTrainer from the start policy on the round's pairs",
    code=("alignloop.ml.training", "alignloop.ml.modeling", "alignloop.pipeline.lineage", "alignloop.core.seeds"),
    params=("seed", "model", "train"), round_params=("prev", "algo", "start", "dpo"),
    deps=lambda c: [*start_deps(c.params, c.round), *reference_deps(c.params, c.round, c.section("dpo").ref), _source(c)],
    outs=lambda c: [layout.policy_dir(c.round)], metrics=lambda c: [layout.train_metrics(c.round)],
    applies=lambda c: c.rnd.algo == "dpo", gpu=True,
)]


def run(params, args) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from alignloop.ml.modeling import load_causal_lm, load_tokenizer
    from alignloop.ml.training import (checkpoint_dir, common_args, lora_config, loss_summary, save_trained,
                                       throughput, to_conversational, train_resumable)

    r = args.round
    d = params.round_section(r, "dpo")
    prev = start_policy(params, r)
    ref_dir = layout.policy_dir("sft") if d.ref == "sft" else prev
    source = _source(Ctx(params, r))
    pairs = files.read_jsonl(source, files.validate_pair, id_key="id")
    if d.max_pairs is not None and len(pairs) > d.max_pairs:
        import random

        # A seeded subset (per round), in file order so the trainer's own shuffling stays the only reordering.
        keep = set(random.Random(round_seed(params.seed, r)).sample(range(len(pairs)), d.max_pairs))
        pairs = [p for i, p in enumerate(pairs) if i in keep]
    tokenizer = load_tokenizer(prev, params.model)
    model = load_causal_lm(prev, params.model)
    peft = lora_config(params)
    # When the reference is the start policy itself, TRL needs no second copy: with LoRA the adapter-disabled policy
    # is it, and precomputed log-probs come from the policy before its first step. Otherwise (and always when neither
    # is on, the default) the reference is loaded from its directory.
    own_ref = Path(ref_dir).resolve() == Path(prev).resolve() and (peft is not None or d.precompute_ref_log_probs)
    ref = None if own_ref else load_causal_lm(ref_dir, params.model)
    ckpt = checkpoint_dir(layout.CKPT_ROOT, f"dpo_{r}", params, {"dpo": d.model_dump(), "seed": params.seed, "round": r},
                          [prev, ref_dir, source], code_paths(SPECS[0], params, r), hash_cache=layout.HASH_CACHE)
    config = DPOConfig(**common_args(params, lr=d.lr, epochs=d.epochs, batch_size=d.batch_size, checkpoint=ckpt,
                                     checkpoint_every=d.checkpoint_every),
                       beta=d.beta, loss_type=d.loss_types, loss_weights=d.loss_weights,
                       f_divergence_type=d.f_divergence_type, f_alpha_divergence_coef=d.f_alpha_divergence_coef,
                       discopop_tau=d.discopop_tau, label_smoothing=d.label_smoothing,
                       precompute_ref_log_probs=d.precompute_ref_log_probs)  # False: TRL's default
    trainer = DPOTrainer(model=model, ref_model=ref, args=config, peft_config=peft,
                         train_dataset=Dataset.from_list(to_conversational(pairs)), processing_class=tokenizer)
    if d.precompute_ref_log_probs and ref is not None:
        # The reference log-probs are columns of the training set now and TRL reads them from there; drop its copy
        # of the reference so training has that GPU memory (TRL itself only frees it under FSDP).
        trainer.ref_model = ref = None
    result = train_resumable(trainer, f"dpo {r}", log=log_step())  # curves stream into the stage's MLflow run
    out = layout.policy_dir(r)
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
    files.write_json(layout.train_metrics(r), metrics)
    shutil.rmtree(ckpt.parent, ignore_errors=True)  # the policy is saved: nothing left to resume
    print(f"dpo {r}: {len(pairs)} {d.pairs} pairs, beta {d.beta}, loss {metrics.get('loss_first', float('nan')):.3f} -> "
          f"{metrics.get('loss_last', float('nan')):.3f}; saved {out}/")
    with stage_run(params.experiment, "dpo", {"dpo": d.model_dump(), "prev": params.rounds[r].prev}, r) as run:
        run.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
