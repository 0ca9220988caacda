"""MLflow tracking for stage runs: one run per stage execution, in the repo's sqlite store.

Used by ``alignloop.stages.*`` only; the pure library never imports MLflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_ROOT = "mlartifacts"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except Exception:
        return "unknown"


def dvc_dep_hashes(stage: str, lock_path: str = "dvc.lock") -> dict[str, str]:
    """The md5 of each dependency of ``stage`` as recorded in dvc.lock by the previous run (if any)."""
    import yaml

    if not Path(lock_path).exists():
        return {}
    lock = yaml.safe_load(Path(lock_path).read_text()) or {}
    entry = (lock.get("stages") or {}).get(stage) or {}
    return {d["path"]: d.get("md5", "") for d in entry.get("deps", []) if isinstance(d, dict)}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


class _Run:
    def __init__(self, mlflow_module):
        self._mlflow = mlflow_module

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in _flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path) -> None:
        self._mlflow.log_artifact(str(path))

    def log_artifacts(self, directory: str | Path, artifact_path: str) -> None:
        self._mlflow.log_artifacts(str(directory), artifact_path)

    @property
    def run_id(self) -> str:
        return self._mlflow.active_run().info.run_id

    @property
    def artifact_uri(self) -> str:
        return self._mlflow.get_artifact_uri()


@contextlib.contextmanager
def stage_run(experiment: str, stage: str, params: dict, round_name: str | None = None) -> Iterator[_Run]:
    """Open an MLflow run for one stage execution, tagged with stage, round, git commit and DVC dep hashes."""
    # Quiet MLflow's own start-up chatter so the stage's progress stays readable.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifact_root = Path(os.environ.get("ALIGNLOOP_ARTIFACT_ROOT", DEFAULT_ARTIFACT_ROOT)).resolve()
        try:
            mlflow.create_experiment(experiment, artifact_location=artifact_root.as_uri())
        except Exception:
            pass  # another process created it first
    mlflow.set_experiment(experiment)
    dvc_stage = stage if round_name is None else f"{stage}_{round_name}"
    tags = {"stage": stage, "git_commit": git_commit(), "dvc_stage": dvc_stage}
    if round_name is not None:
        tags["round"] = round_name
    for path, md5 in dvc_dep_hashes(dvc_stage).items():
        tags[f"dvc_dep.{path}"] = md5
    run_name = dvc_stage
    with mlflow.start_run(run_name=run_name, tags=tags):
        flat = {k: v for k, v in _flatten(params).items()}
        # MLflow caps param values at 6000 chars and batches of 100.
        items = [(k, str(v)[:500]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))
        yield _Run(mlflow)


def content_hash(path: str | Path) -> str:
    """md5 over the files of a directory (or one file), in sorted order: a model's content identity."""
    path = Path(path)
    h = hashlib.md5()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
