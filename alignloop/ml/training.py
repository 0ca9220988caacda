"""Settings, resumable training and reporting shared by the TRL-trained stages (sft, reward_model, dpo, raft)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from alignloop.core import files

COMPLETE = "COMPLETE"  # written into a checkpoint folder only after the Trainer has finished writing it


def checkpoint_dir(root: str | Path, key: str, params, settings: dict, inputs: list[str], code: list[Path],
                   hash_cache: str | Path | None = None) -> Path:
    """Where a training run keeps its resumable checkpoints: ``<root>/<key>/<fingerprint>``.

    The fingerprint covers the stage's settings, the model and shared training settings (LoRA, gradient
    checkpointing, distribution, process count), every input file and the stage's code (its spec's code list: the
    same files DVC tracks), so a checkpoint is only ever resumed by the run that would have produced it;
    checkpoints of other fingerprints under ``key`` are deleted. Files are hashed through ``hash_cache``
    (core.files.file_md5), so weights another stage already hashed are not read again.

    The number of processes that wrote a checkpoint is kept beside it (``WORLD_SIZE``): a run with another count —
    ``train.processes: 0`` on a machine whose GPU count changed, say — would shard the data and the optimizer
    differently, so it is refused with the fix instead of resumed or silently restarted.
    """
    from alignloop.core.config import ConfigError

    # train.processes is left out: the count is checked against WORLD_SIZE below, so changing it refuses the
    # checkpoint with the fix rather than deleting it as another run's
    settings = {**settings, "model": params.model.model_dump(), "train": params.train.model_dump(exclude={"processes"})}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    files.hash_paths([Path(x) for x in inputs] + list(code), h, hash_cache)
    root = Path(root)
    path = root / key / h.hexdigest()[:16]
    for stale in (root / key).glob("*") if (root / key).is_dir() else []:
        if stale != path:
            shutil.rmtree(stale, ignore_errors=True)
    world, marker = os.environ.get("WORLD_SIZE", "1"), path / "WORLD_SIZE"
    written = marker.read_text().strip() if marker.is_file() else None
    resumable = last_complete_checkpoint(path)
    if resumable is not None and written is not None and written != world:
        raise ConfigError(
            f"{resumable} was written by {written} training process(es); this run has {world}, and resuming across "
            f"process counts would change the data order and optimizer state (fix: run with {written} processes, "
            f"e.g. train.processes: {written}, to resume it, or delete {path} to start this training over)")
    if written != world and os.environ.get("RANK", "0") == "0":
        path.mkdir(parents=True, exist_ok=True)
        with files.atomic_file(marker) as fh:
            fh.write(world)
    return path


def last_complete_checkpoint(path: Path) -> Path | None:
    """The newest ``checkpoint-<step>`` under ``path`` whose writing finished (has the COMPLETE marker)."""
    done = [c for c in path.glob("checkpoint-*") if (c / COMPLETE).is_file()] if path.is_dir() else []
    return max(done, key=lambda c: int(c.name.rsplit("-", 1)[1]), default=None)


def train_resumable(trainer, label: str, log=None):
    """``trainer.train()``, resumed from the last complete checkpoint in ``trainer.args.output_dir`` if there is one.

    The Trainer restores weights, optimiser, scheduler, RNG state and the data position, so a resumed run continues
    the interrupted one instead of restarting it. A checkpoint folder counts only once its COMPLETE marker exists: a
    kill while the Trainer writes one leaves an unmarked folder that is ignored. ``log(logs, step)``, if given, gets
    every dict the Trainer logs as it logs it (the stage streams them into its MLflow run: curves while training).
    """
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            # Also checkpoint the last step: a kill between the end of training and the stage's atomic save then
            # resumes with nothing left to train (matters for reward-model ensembles, trained one after another).
            if args.save_strategy != "no" and state.global_step >= state.max_steps:
                control.should_save = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if log is not None and logs and state.is_world_process_zero:
                log(logs, state.global_step)
            return control

        def on_save(self, args, state, control, **kwargs):
            # With several workers each writes its part (rank 0 the weights and optimizer, every rank its RNG
            # state) and reaches this callback on its own: wait for all, then rank 0 alone marks the folder. A
            # marker from whichever worker got here first could mark a folder a kill leaves without weights
            # (seen: a 2-process resume failed with "Can't find a valid checkpoint").
            if args.world_size > 1:
                torch.distributed.barrier()
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                (folder / COMPLETE).write_text(str(state.global_step))
            return control

    trainer.add_callback(MarkComplete())
    resume = last_complete_checkpoint(Path(trainer.args.output_dir))
    if resume is not None:
        print(f"{label}: resuming from {resume}", flush=True)
    return trainer.train(resume_from_checkpoint=str(resume) if resume else None)


def to_conversational(rows: list[dict]) -> list[dict]:
    """Preference pairs in TRL's conversational shape (prompt messages, one assistant turn each side)."""
    from alignloop.ml.modeling import as_messages

    return [{
        "prompt": as_messages(r["prompt"]),
        "chosen": [{"role": "assistant", "content": r["chosen"]}],
        "rejected": [{"role": "assistant", "content": r["rejected"]}],
    } for r in rows]


def common_args(params, *, lr: float, epochs: float, batch_size: int, warmup_ratio: float = 0.05,
                checkpoint: Path | None = None, checkpoint_every: int = 0) -> dict:
    """TrainingArguments fields every stage sets the same way.

    Checkpoints (optimiser and RNG state included, so a killed run resumes exactly) go to ``checkpoint`` every
    ``checkpoint_every`` optimizer steps; the stage saves its final model atomically itself and deletes them. No hub,
    no integrations: the stage logs its own MLflow run so each DVC stage execution is exactly one run.
    """
    bf16 = params.model.dtype == "bfloat16" and torch.cuda.is_available()
    save = checkpoint is not None and checkpoint_every > 0
    # Under `accelerate launch` (alignloop/launch.py) each of WORLD_SIZE workers takes its share of batch_size, so
    # batch_size stays the examples per optimizer step whatever the GPU count. One process: WORLD_SIZE unset.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_size % world:
        from alignloop.core.config import ConfigError

        raise ConfigError(f"batch_size {batch_size} is not divisible by the {world} training processes, so the "
                          f"global batch would shrink to {batch_size // world * world} (fix: a multiple of {world}, "
                          "or another train.processes)")
    multi = dict(ddp_find_unused_parameters=False) if world > 1 else {}  # every parameter gets a gradient
    return dict(
        output_dir=str(checkpoint) if save else tempfile.mkdtemp(prefix="alignloop-trainer-"),
        learning_rate=lr,
        num_train_epochs=epochs,
        per_device_train_batch_size=max(1, batch_size // world),
        per_device_eval_batch_size=max(1, batch_size // world),
        lr_scheduler_type="cosine",
        warmup_steps=warmup_ratio,
        logging_steps=5,
        save_strategy="steps" if save else "no",
        **({"save_steps": checkpoint_every} if save else {}),
        save_total_limit=2,  # the newest may be unmarked (killed while writing); keep the one before it
        report_to="none",
        seed=params.seed,
        data_seed=params.seed,
        bf16=bf16,
        max_length=params.model.max_length,
        dataloader_num_workers=0,
        disable_tqdm=False,
        # Activations recomputed in the backward pass (TRL also makes it work with PEFT adapters). True is the TRL
        # configs' own default, so the default pipeline trains exactly as before; presets turn it off for speed.
        gradient_checkpointing=params.train.gradient_checkpointing,
        **multi,
    )


def loss_summary(log_history: list[dict], key: str = "loss") -> dict[str, float]:
    """First/last/min logged training loss; the first and last make 'the loss fell' checkable."""
    losses = [h[key] for h in log_history if key in h and math.isfinite(h[key])]
    if not losses:
        return {}
    return {f"{key}_first": losses[0], f"{key}_last": losses[-1], f"{key}_min": min(losses)}


def lora_config(params, *, reward_model: bool = False):
    """The PEFT LoraConfig for a TRL trainer's ``peft_config`` from ``train.lora``, or None (full fine-tuning).

    A reward model gets task type SEQ_CLS, which also trains its fresh score head in full.
    """
    lo = params.train.lora
    if not lo.enabled or (reward_model and not lo.reward_model):
        return None
    from peft import LoraConfig

    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_modules,
                      task_type="SEQ_CLS" if reward_model else "CAUSAL_LM")


def save_trained(trainer, tokenizer, out: str) -> bool:
    """Save the trained model with its tokenizer as a full safetensors directory at ``out``, atomically.

    LoRA adapters are merged into the weights first (merge_and_unload), so later stages load a plain model with
    ``from_pretrained`` as if it had been fully fine-tuned. Under accelerate every worker calls this (FSDP gathers
    the full weights collectively) and only the main process writes: it returns True there, False in the other
    workers, which then end the stage without outputs or an MLflow run.
    """
    from accelerate.utils import is_peft_model

    model = trainer.model.merge_and_unload() if is_peft_model(trainer.model) else trainer.model
    state_dict = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    main = trainer.is_world_process_zero()
    if main:
        with files.atomic_dir(out) as tmp:
            model.save_pretrained(tmp, state_dict=state_dict)  # safetensors weights + config; no training_args.bin
            tokenizer.save_pretrained(tmp)
    if trainer.args.world_size > 1:
        trainer.accelerator.wait_for_everyone()
    return main


def throughput(trainer, result) -> dict:
    """What bench/gpu_round.py needs for tokens/s and MFU, from the finished ``trainer.train()``.

    ``train_tokens``: the non-padding tokens the trained model ran forward and backward on, all workers together
    (TRL's own count: attention-mask sum per batch, or the packed length; prompt tokens included, for DPO chosen and
    rejected both). ``model_params`` leaves LoRA adapter weights out; ``trainable_params`` are those updated.
    """
    tokens = int(getattr(trainer, "_total_train_tokens", 0))
    runtime = float(result.metrics["train_runtime"])
    named = list(trainer.model.named_parameters())
    return {"train_tokens": tokens, "train_tokens_per_s": tokens / runtime if runtime > 0 else 0.0,
            "model_params": sum(p.numel() for n, p in named if "lora_" not in n),
            "trainable_params": sum(p.numel() for _, p in named if p.requires_grad),
            "world_size": trainer.args.world_size}
