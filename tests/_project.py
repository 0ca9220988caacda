"""Fresh alignloop projects for the stage-level and end-to-end test modules: a copy of the package, a params.yaml,
git + DVC initialised, dvc.yaml rendered; commands run with this interpreter's tools and the project's own MLflow
store."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def project_env(root: Path) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "PYTHONPATH": str(root)}


def sh(args: list[str], cwd: Path, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=project_env(cwd), capture_output=True, text=True, timeout=timeout)
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
