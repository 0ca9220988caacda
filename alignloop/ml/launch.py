"""Multi-GPU training on one machine: a training stage relaunches itself through ``accelerate launch``.

DVC runs ``python -m alignloop.pipeline.stages.<stage> ...`` (the rendered commands never change). When that process sees
more than one CUDA GPU, and is not already one of accelerate's worker processes, it runs

    accelerate launch --config_file configs/accelerate/<ddp|fsdp|zero2>.yaml --num_processes N \
        -m alignloop.pipeline.stages.<stage> <same args>

and exits with its status. Each worker then trains on one GPU; the Trainer (TRL) handles DDP / FSDP / ZeRO through
accelerate, and only the main process writes the stage's outputs and MLflow run. ``launch_command`` is the pure
decision; ``maybe_relaunch`` applies it. Under the Prefect flow each GPU task sees one device
(``CUDA_VISIBLE_DEVICES``), so it trains in one process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

TRAINING_STAGES = frozenset({"sft", "reward_model", "dpo", "raft"})
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
# Set in every worker process `accelerate launch` (torchrun) starts: their presence means "I am a worker already".
_WORKER_ENV = ("LOCAL_RANK", "WORLD_SIZE")


def launch_command(stage: str, argv: list[str], *, n_gpus: int, env: Mapping[str, str], mode: str,
                   python: str = sys.executable, config_dir: Path = CONFIG_DIR) -> list[str] | None:
    """The ``accelerate launch`` command that runs ``stage`` with ``argv`` on ``n_gpus`` processes, or None to
    train in this process: not a training stage, one GPU or none, ``mode`` 'off', or already a worker."""
    if stage not in TRAINING_STAGES or mode == "off" or n_gpus < 2 or any(k in env for k in _WORKER_ENV):
        return None
    config = "ddp" if mode == "auto" else mode
    return [python, "-m", "accelerate.commands.launch", "--config_file", str(config_dir / f"{config}.yaml"),
            "--num_processes", str(n_gpus), "-m", f"alignloop.pipeline.stages.{stage}", *argv]


def maybe_relaunch(stage: str, argv: list[str], mode: str) -> int | None:
    """Run the stage under ``accelerate launch`` when :func:`launch_command` says so; its exit code, else None."""
    import os

    if stage not in TRAINING_STAGES:  # never relaunched: skip asking CUDA, which means importing torch (~2 s)
        return None
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cmd = launch_command(stage, argv, n_gpus=n_gpus, env=os.environ, mode=mode)
    if cmd is None:
        return None
    print(f"{stage}: {n_gpus} GPUs visible, relaunching: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd)
