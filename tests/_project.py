"""Fresh alignloop projects for the stage-level and end-to-end test modules: a copy of the package, a params.yaml,
git + DVC initialised, dvc.yaml rendered; commands run with this interpreter's tools and the project's own MLflow
store."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def project_env(root: Path) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "PYTHONPATH": str(root)}


def sh(args: list[str], cwd: Path, check: bool = True, timeout: int = 1200,
       env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env={**project_env(cwd), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def init_project(root: Path, params: dict) -> Path:
    shutil.copytree(REPO / "alignloop", root / "alignloop", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], root)
    sh(["dvc", "init", "-q"], root)
    sh(["alignloop", "render"], root)
    return root


@contextlib.contextmanager
def flow_env(root: Path):
    """In-process flows start stage subprocesses that inherit this environment: point it at the project."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "PYTHONPATH": str(root)})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def read(root: Path, rel: str):
    return json.loads((root / rel).read_text())


def kill_during(root: Path, stage: str, ready) -> str:
    """Start `dvc repro -f -s <stage>`, SIGKILL its whole process group once ``ready`` fired; returns its log.
    Fails if the stage finished first or ``ready`` never fired (a timeout is not a kill mid-work)."""
    log_path = root / f"kill-{stage}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", stage], cwd=root, env=project_env(root),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    fired = False
    try:
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if ready(root, log_path.read_text(errors="replace")):
                fired = True
                break
            time.sleep(0.02)
        finished = proc.poll() is not None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended between the check and the kill
            finished = True
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert not finished, f"{stage} finished before it could be killed:\n{text[-3000:]}"
    assert fired, f"{stage}: the kill trigger never fired in 600 s:\n{text[-3000:]}"
    return text
