"""Multi-process training on one machine: a training stage relaunches itself through ``accelerate launch``.

DVC runs ``python -m alignloop.pipeline.stages.<stage> ...`` (the rendered commands never change). When that process
should train in several processes — more than one CUDA GPU visible, or ``train.processes: N`` — and is not already
one of accelerate's worker processes, it runs

    accelerate launch --config_file alignloop/ml/accelerate/<ddp|fsdp|zero2>.yaml --num_processes N \
        -m alignloop.pipeline.stages.<stage> <same args>

and exits with its status. Each worker then trains its share of every batch (one GPU each; on a machine without
CUDA GPUs, one CPU process each, gradients all-reduced over gloo); the Trainer (TRL) handles DDP / FSDP / ZeRO
through accelerate, and only the main process writes the stage's outputs and MLflow run. On CPU the workers get
``ACCELERATE_USE_CPU=1``: without it accelerate's state sees WORLD_SIZE=2 but no GPU and every worker would train
alone (checked, accelerate 1.x ``PartialState._prepare_backend``: MULTI_CPU needs ``cpu``). ``launch_command`` is
the pure decision; ``maybe_relaunch`` applies it. Under the Prefect flow each GPU task sees one device
(``CUDA_VISIBLE_DEVICES``), so it trains in one process unless ``train.processes`` says otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

TRAINING_STAGES = frozenset({"sft", "reward_model", "dpo", "raft"})
CONFIG_DIR = Path(__file__).resolve().parent / "accelerate"  # shipped inside the package: installed copies have it too
# Set in every worker process `accelerate launch` (torchrun) starts: their presence means "I am a worker already".
_WORKER_ENV = ("LOCAL_RANK", "WORLD_SIZE")


def processes_for(n_gpus: int, processes: int, mode: str) -> int:
    """How many training processes: ``processes`` when set (any count on CPU; at most one per GPU with GPUs), else
    one per GPU when there are two or more, else 1. ``mode`` 'off' trains in one process (params forbid 'off' with
    processes >= 2)."""
    from alignloop.core.config import ConfigError

    if mode == "off":
        return 1
    if processes == 0:
        return n_gpus if n_gpus >= 2 else 1
    if n_gpus and processes > n_gpus:
        raise ConfigError(f"train.processes is {processes} but {n_gpus} CUDA GPU(s) are visible (fix: at most "
                          f"{n_gpus}, or 0 for one process per GPU)")
    if not n_gpus and processes >= 2 and mode in ("fsdp", "zero2"):
        raise ConfigError(f"train.distributed '{mode}' needs CUDA GPUs; on this machine without them train.processes "
                          f"{processes} can run DDP only (fix: train.distributed: ddp or auto)")
    return processes


def launch_command(stage: str, argv: list[str], *, n_gpus: int, env: Mapping[str, str], mode: str,
                   processes: int = 0, python: str = sys.executable, config_dir: Path = CONFIG_DIR) -> list[str] | None:
    """The ``accelerate launch`` command that runs ``stage`` with ``argv`` in several processes, or None to train
    in this process: not a training stage, one process (see :func:`processes_for`), or already a worker."""
    if stage not in TRAINING_STAGES or any(k in env for k in _WORKER_ENV):
        return None
    n = processes_for(n_gpus, processes, mode)
    if n < 2:
        return None
    config = "ddp" if mode == "auto" else mode
    return [python, "-m", "accelerate.commands.launch", "--config_file", str(config_dir / f"{config}.yaml"),
            "--num_processes", str(n), "-m", f"alignloop.pipeline.stages.{stage}", *argv]


def die_with_parent() -> None:
    """In an accelerate / torchrun worker: be SIGKILLed by the kernel when the launcher dies (Linux prctl
    PR_SET_PDEATHSIG). torchrun starts each worker in a session of its own (``start_new_session=True`` in
    torch.distributed.elastic's SubprocessHandler), so a SIGKILL of the stage's process group — DVC killed, a
    Prefect task cancelled hard — kills the launcher but not the workers, which would go on training and write the
    stage's outputs after DVC has gone. A no-op outside workers and off Linux."""
    import ctypes
    import os
    import signal

    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the line above: no one is left to wait for this worker
        os._exit(1)


def maybe_relaunch(stage: str, argv: list[str], mode: str, processes: int = 0) -> int | None:
    """Run the stage under ``accelerate launch`` when :func:`launch_command` says so; its exit code, else None."""
    import os

    if stage not in TRAINING_STAGES:  # never relaunched: skip asking CUDA, which means importing torch (~2 s)
        return None
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cmd = launch_command(stage, argv, n_gpus=n_gpus, env=os.environ, mode=mode, processes=processes)
    if cmd is None:
        return None
    env = dict(os.environ)
    if not n_gpus:
        env["ACCELERATE_USE_CPU"] = "1"  # gloo DDP across CPU processes, not N independent runs
    where = f"{n_gpus} GPUs visible" if n_gpus else "no CUDA GPU: CPU processes, gloo"
    print(f"{stage}: {where}, relaunching: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, env=env)
