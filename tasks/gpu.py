"""GPU slots: at most one GPU task per visible GPU, each told which device is its own.

Two layers, both real: a Prefect global concurrency limit named ``gpu-<host>`` (visible and adjustable in the
UI, sized to this machine's GPUs by the flow) queues GPU tasks inside Prefect, and a per-device file lock
shared by every process on the machine picks the device and sets ``CUDA_VISIBLE_DEVICES`` for the task's
subprocess, so two flow runs (or a flow and a shard) never share a GPU. With no GPU visible both are no-ops.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Shared by every process on the machine (override for tests or per-user isolation).
LOCK_DIR = Path(os.environ.get("ALIGNLOOP_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "alignloop-gpu-locks")


def limit_name() -> str:
    return f"gpu-{socket.gethostname()}".lower()


def visible_gpus() -> list[str]:
    """Device ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else what ``nvidia-smi -L`` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def gpu_devices(slots: int | None) -> list[str]:
    """The devices GPU tasks take turns on: all visible ones, or the first ``slots`` of them."""
    devices = visible_gpus()
    return devices if slots is None else devices[:slots]


@contextmanager
def device_lock(devices: list[str], poll_s: float = 0.5) -> Iterator[str | None]:
    """Hold one of ``devices`` exclusively until the block ends; wait while all are taken. None if no devices."""
    if not devices:
        yield None
        return
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    while True:
        for device in devices:
            fh = open(LOCK_DIR / f"gpu-{device}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                yield device
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        time.sleep(poll_s)


@contextmanager
def gpu_slot(devices: list[str]) -> Iterator[str | None]:
    """Prefect concurrency slot (when there are GPUs), then a device of our own."""
    if not devices:
        yield None
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(limit_name(), occupy=1), device_lock(devices) as device:
        yield device


def ensure_limit(devices: list[str]) -> None:
    """Create or resize this machine's GPU concurrency limit to its device count (flow start)."""
    if not devices:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(limit_name(), len(devices))
