"""Run a command and stream its output into the Prefect logger, keeping the tail for error messages."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path


class StageFailed(RuntimeError):
    """A pipeline command exited non-zero; the message is the stage's own error text."""

    def __init__(self, what: str, returncode: int, text: str, retryable: bool):
        super().__init__(f"{what} failed (exit {returncode}):\n{text}")
        self.returncode = returncode
        self.retryable = retryable


def stage_env(device: str | None) -> dict[str, str]:
    """The subprocess environment: this interpreter's bin first (dvc, python), and the task's GPU if any."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Every output line becomes a Prefect log record: progress bars (ours and the Trainer's) update every 5 s at most.
    env.setdefault("TQDM_MININTERVAL", "5")
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return env


def error_text(lines: list[str]) -> str:
    """The stage's own error (our stages print ``error: ...``, DVC then adds ``ERROR: ...``), else the tail."""
    start = next((i for i, l in enumerate(lines) if l.startswith("error:")), None)
    if start is None:
        return "\n".join(lines[-30:])
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("ERROR:")), len(lines))
    return "\n".join(lines[start : end + 1])


def deterministic_failure(lines: list[str]) -> bool:
    """Our stages exit 2 on bad params/data/inputs: running them again cannot help, so no retry."""
    return any("exited with 2" in l for l in lines[-5:]) or (bool(lines) and lines[-1].startswith("error:"))


def stream(cmd: list[str], cwd: str | Path, env: dict[str, str], log) -> tuple[int, list[str]]:
    """Run ``cmd``; each output line goes to ``log`` as it comes. Returns (exit code, last 400 lines)."""
    tail: deque[str] = deque(maxlen=400)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:  # tqdm's \r updates arrive as separate lines (text mode), every ~2 s at most
        line = line.rstrip()
        if line:
            log(line)
            tail.append(line)
    return proc.wait(), list(tail)
