"""MLflow tracking for stage runs: one run per stage execution, in the repo's sqlite store.

Used by ``alignloop.pipeline.stages.*`` only; the pure library never imports MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
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


def lock_entry(stage: str, lock_path: str = "dvc.lock") -> dict:
    """``stage``'s entry in dvc.lock as the previous run recorded it ({} if none)."""
    import yaml

    if not Path(lock_path).exists():
        return {}
    # libyaml's loader where present: dvc.lock of a long pipeline takes the pure-Python one ~0.4 s per stage.
    lock = yaml.load(Path(lock_path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    return (lock.get("stages") or {}).get(stage) or {}


def dvc_dep_hashes(stage: str, lock_path: str = "dvc.lock") -> dict[str, str]:
    """The md5 of each dependency of ``stage`` as recorded in dvc.lock by the previous run (if any)."""
    entry = lock_entry(stage, lock_path)
    return {d["path"]: d.get("md5", "") for d in entry.get("deps", []) if isinstance(d, dict)}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


@contextlib.contextmanager
def store_lock(uri: str | None = None) -> Iterator[None]:
    """Exclusive lock for a sqlite store shared by several pipelines (a no-op for a tracking server, which
    serialises itself): held while one creates the store's schema or writes the registry."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".registry-lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|AUTH", re.I)


def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...)."""
    env = os.environ if env is None else env
    return [v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= 6]


def redact(values: dict[str, str], secrets: list[str]) -> dict[str, str]:
    """Each value with any secret in it replaced by '***': nothing from a secret variable reaches MLflow, even when
    it was pasted into params.yaml (a hub token in a URL, say)."""
    return {k: "***" if any(sec in v for sec in secrets) else v for k, v in values.items()}


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
    # Two pipelines starting at once on a fresh sqlite store would both run its schema migrations and one would fail
    # ("table already exists"): the first access (which creates the schema) and the experiment creation are serialised.
    with store_lock(uri):
        if mlflow.get_experiment_by_name(experiment) is None:
            artifact_root = Path(os.environ.get("ALIGNLOOP_ARTIFACT_ROOT", DEFAULT_ARTIFACT_ROOT)).resolve()
            mlflow.create_experiment(experiment, artifact_location=artifact_root.as_uri())
        mlflow.set_experiment(experiment)
    dvc_stage = stage if round_name is None else f"{stage}_{round_name}"
    # workdir: which working copy ran the stage, when several pipelines share one store.
    tags = {"stage": stage, "git_commit": git_commit(), "dvc_stage": dvc_stage, "workdir": str(Path.cwd())}
    if round_name is not None:
        tags["round"] = round_name
    for path, md5 in dvc_dep_hashes(dvc_stage).items():
        tags[f"dvc_dep.{path}"] = md5
    run_name = dvc_stage
    secrets = secret_values()
    with mlflow.start_run(run_name=run_name, tags=redact(tags, secrets)):
        flat = redact({k: str(v) for k, v in _flatten(params).items()}, secrets)
        # MLflow caps param values at 6000 chars and batches of 100.
        items = [(k, v[:500]) for k, v in flat.items()]
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
