"""Settings and reporting shared by the three TRL-trained stages (sft, reward_model, dpo)."""

from __future__ import annotations

import math
import tempfile

import torch


def common_args(params, *, lr: float, epochs: float, batch_size: int, warmup_ratio: float = 0.05) -> dict:
    """TrainingArguments fields every stage sets the same way.

    No checkpoints (the stage saves the final model atomically), no hub, no integrations: the stage logs its
    own MLflow run so each DVC stage execution is exactly one run.
    """
    bf16 = params.model.dtype == "bfloat16" and torch.cuda.is_available()
    return dict(
        output_dir=tempfile.mkdtemp(prefix="alignloop-trainer-"),
        learning_rate=lr,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_ratio,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=params.seed,
        data_seed=params.seed,
        bf16=bf16,
        max_length=params.model.max_length,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def loss_summary(log_history: list[dict], key: str = "loss") -> dict[str, float]:
    """First/last/min logged training loss; the first and last make 'the loss fell' checkable."""
    losses = [h[key] for h in log_history if key in h and math.isfinite(h[key])]
    if not losses:
        return {}
    return {f"{key}_first": losses[0], f"{key}_last": losses[-1], f"{key}_min": min(losses)}


def log_curves(run, log_history: list[dict], keys: tuple[str, ...]) -> None:
    for h in log_history:
        if "step" in h:
            run.log_metrics({f"train.{k}": h[k] for k in keys if k in h}, step=int(h["step"]))
