"""A scratch copy of a finished embedded pipeline for experiments that must not touch the repo's outputs, and a
runner for one round's stages (the stage modules DVC would call, in dvc.yaml order) — so the copy's dvc.lock, made
by an older code version, does not make DVC retrain SFT and the reward model first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from alignloop.pipeline import layout

# What the rounds start from: the package, params, curated data, the models before the rounds, SFT's evaluation.
PARTS = ("alignloop", layout.PARAMS, layout.CURATED, str(Path(layout.SFT).parent), str(Path(layout.eval_paths("sft")[0]).parent))


def scratch_copy(project: Path, prefix: str, parts: tuple[str, ...] = PARTS, work: Path | None = None) -> tuple[Path, dict]:
    """Copy ``parts`` of ``project`` into ``work`` (default: a new temporary directory)."""
    work = Path(tempfile.mkdtemp(prefix=prefix)) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    for part in parts:
        src = project / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / part)
    env = {**os.environ, "PYTHONPATH": str(work), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    return work, env


def set_params(work: Path, env: dict, edit) -> dict:
    """Apply ``edit(params_dict)`` to the copy's params.yaml and re-render dvc.yaml; returns the stages."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    edit(params)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "alignloop", "render"], cwd=work, env=env, check=True)
    return yaml.safe_load((work / "dvc.yaml").read_text())["stages"]


def run_stage(work: Path, env: dict, stage: dict, name: str) -> None:
    print(f"--- {name}", flush=True)
    cmd = stage["cmd"].split()
    subprocess.run([sys.executable, *cmd[1:]], cwd=work, env=env, check=True)  # cmd[0] is "python"


def run_round(work: Path, env: dict, stages: dict, r: str) -> None:
    for name, stage in stages.items():
        if name.endswith(f"_{r}") and not name.startswith("register_"):
            run_stage(work, env, stage, name)
