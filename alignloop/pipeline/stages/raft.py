"""Stage `raft`: reward-ranked fine-tuning (RAFT, Dong et al. 2023) — SFT on the best of the round's samples.

Selection (alignloop.core.selection, pure): the top ``raft.k`` responses of each prompt, or the top ``raft.fraction`` of
all responses; empty responses never. Training: TRL SFTTrainer from the round's start policy, loss on the response
tokens only, like the sft stage. Outputs: ``raft.jsonl`` (the selected demonstrations, SFT contract) and the policy.
"""

from __future__ import annotations

import shutil
import sys

from alignloop.core import files
from alignloop.core.pairs import read_groups
from alignloop.core.selection import raft_top_fraction, raft_top_k
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import start_deps
from alignloop.pipeline.specs import StageSpec, code_paths

SPECS = [StageSpec(
    name="raft", module="alignloop.pipeline.stages.raft", scope="round", order=3,
    help="TRL SFTTrainer on the top-k responses per prompt (or top fraction overall)",
    code=("alignloop.ml.training", "alignloop.ml.modeling", "alignloop.core.pairs", "alignloop.core.selection",
          "alignloop.pipeline.lineage"),
    params=("seed", "model", "train"), round_params=("prev", "algo", "start", "raft"),
    deps=lambda c: [*start_deps(c.params, c.round), layout.samples(c.round), layout.scores(c.round)],
    outs=lambda c: [layout.raft_data(c.round), layout.policy_dir(c.round)],
    metrics=lambda c: [layout.train_metrics(c.round)],
    applies=lambda c: c.rnd.algo == "raft", gpu=True,
)]


def select(groups: dict, cfg, round_name: str) -> list[dict]:
    """SFT rows of the selected responses, best first within the selection rule's order."""
    picked = raft_top_k(groups, cfg.k) if cfg.select == "top_k" else raft_top_fraction(groups, cfg.fraction)
    return [{"id": f"{round_name}-{s['prompt_id']}-{s['sample_idx']}", "prompt": s["prompt"], "response": s["response"],
             "reward": w} for s, w in picked]


def run(params, args) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignloop.pipeline.lineage import start_policy
    from alignloop.ml.modeling import as_messages, load_causal_lm, load_tokenizer
    from alignloop.ml.training import (checkpoint_dir, common_args, lora_config, loss_summary,
                                         save_trained, throughput, train_resumable)
    from alignloop.pipeline.tracking import log_step, stage_run

    r = args.round
    c = params.round_section(r, "raft")
    start = start_policy(params, r)
    groups = read_groups(layout.samples(r), layout.scores(r))
    rows = select(groups, c, r)
    if not rows:
        raise files.DataError(f"{layout.samples(r)}: every response is empty, nothing to fine-tune on "
                           f"(fix: raise generate.max_new_tokens or check the policy {start})")
    files.write_jsonl(layout.raft_data(r), rows)

    tokenizer = load_tokenizer(start, params.model)
    model = load_causal_lm(start, params.model)
    dataset = Dataset.from_list([{"prompt": as_messages(x["prompt"]),
                                  "completion": [{"role": "assistant", "content": x["response"]}]} for x in rows])
    ckpt = checkpoint_dir(layout.CKPT_ROOT, f"raft_{r}", params, {"raft": c.model_dump(), "seed": params.seed},
                          [start, layout.raft_data(r)], code_paths(SPECS[0], params, r), hash_cache=layout.HASH_CACHE)
    config = SFTConfig(**common_args(params, lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, checkpoint=ckpt,
                                     checkpoint_every=c.checkpoint_every), completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(params))  # None unless train.lora.enabled
    result = train_resumable(trainer, f"raft {r}", log=log_step())  # curves stream into the stage's MLflow run
    out = layout.policy_dir(r)
    stats = throughput(trainer, result)
    if not save_trained(trainer, tokenizer, out):  # merges LoRA; False in accelerate workers other than the main one
        return
    metrics = {"selected": len(rows), "samples": sum(map(len, groups.values())), "selected_reward_mean": sum(x["reward"] for x in rows) / len(rows),
               "train_runtime_s": result.metrics["train_runtime"], **loss_summary(trainer.state.log_history), **stats}
    files.write_json(layout.train_metrics(r), metrics)
    shutil.rmtree(ckpt.parent, ignore_errors=True)  # the policy is saved: nothing left to resume
    print(f"raft {r}: {len(rows)} of {metrics['samples']} samples (mean reward {metrics['selected_reward_mean']:.3f}), loss "
          f"{metrics.get('loss_first', float('nan')):.3f} -> {metrics.get('loss_last', float('nan')):.3f}; saved {out}/")
    with stage_run(params.experiment, "raft", {"raft": c.model_dump(), "prev": params.rounds[r].prev}, r) as run_:
        run_.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
