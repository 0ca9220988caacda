"""Stage `raft`: reward-ranked fine-tuning (RAFT, Dong et al. 2023) — SFT on the best of the round's samples.

Selection (alignloop.selection, pure): the top ``raft.k`` responses of each prompt, or the top ``raft.fraction`` of
all responses; empty responses never. Training: TRL SFTTrainer from the round's start policy, loss on the response
tokens only, like the sft stage. Outputs: ``raft.jsonl`` (the selected demonstrations, SFT contract) and the policy.
"""

from __future__ import annotations

import shutil
import sys

from alignloop import io
from alignloop.selection import raft_top_fraction, raft_top_k
from alignloop.stages._cli import stage_main
from alignloop.stages.pairs import read_groups


def select(groups: dict, cfg, round_name: str) -> list[dict]:
    """SFT rows of the selected responses, best first within the selection rule's order."""
    picked = raft_top_k(groups, cfg.k) if cfg.select == "top_k" else raft_top_fraction(groups, cfg.fraction)
    return [{"id": f"{round_name}-{s['prompt_id']}-{s['sample_idx']}", "prompt": s["prompt"], "response": s["response"],
             "reward": w} for s, w in picked]


def run(params, args) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignloop.lineage import start_policy
    from alignloop.modeling import as_messages, load_causal_lm, load_tokenizer
    from alignloop.stages._train import (checkpoint_dir, common_args, log_curves, lora_config, loss_summary,
                                         save_trained, throughput, train_resumable)
    from alignloop.tracking import stage_run

    r = args.round
    c = params.round_section(r, "raft")
    start = start_policy(params, r)
    groups = read_groups(r)
    rows = select(groups, c, r)
    if not rows:
        raise io.DataError(f"data/rounds/{r}/samples.jsonl: every response is empty, nothing to fine-tune on "
                           f"(fix: raise generate.max_new_tokens or check the policy {start})")
    io.write_jsonl(f"data/rounds/{r}/raft.jsonl", rows)

    tokenizer = load_tokenizer(start, params.model)
    model = load_causal_lm(start, params.model)
    dataset = Dataset.from_list([{"prompt": as_messages(x["prompt"]),
                                  "completion": [{"role": "assistant", "content": x["response"]}]} for x in rows])
    ckpt = checkpoint_dir(f"raft_{r}", params, {"raft": c.model_dump(), "seed": params.seed},
                          [start, f"data/rounds/{r}/raft.jsonl", __file__])
    config = SFTConfig(**common_args(params, lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, checkpoint=ckpt,
                                     checkpoint_every=c.checkpoint_every), completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(params))  # None unless train.lora.enabled
    result = train_resumable(trainer, f"raft {r}")
    out = f"data/rounds/{r}/policy"
    stats = throughput(trainer, result)
    if not save_trained(trainer, tokenizer, out):  # merges LoRA; False in accelerate workers other than the main one
        return
    metrics = {"selected": len(rows), "samples": sum(map(len, groups.values())), "selected_reward_mean": sum(x["reward"] for x in rows) / len(rows),
               "train_runtime_s": result.metrics["train_runtime"], **loss_summary(trainer.state.log_history), **stats}
    io.write_json(f"data/rounds/{r}/train_metrics.json", metrics)
    shutil.rmtree(ckpt.parent, ignore_errors=True)  # the policy is saved: nothing left to resume
    print(f"raft {r}: {len(rows)} of {metrics['samples']} samples (mean reward {metrics['selected_reward_mean']:.3f}), loss "
          f"{metrics.get('loss_first', float('nan')):.3f} -> {metrics.get('loss_last', float('nan')):.3f}; saved {out}/")
    with stage_run(params.experiment, "raft", {"raft": c.model_dump(), "prev": params.rounds[r].prev}, r) as run_:
        log_curves(run_, trainer.state.log_history, ("loss", "learning_rate", "mean_token_accuracy"))
        run_.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main("raft", run, needs_round=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
