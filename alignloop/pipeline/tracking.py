"""MLflow tracking for stage runs: one run per stage execution, in the repo's sqlite store.

Used by ``alignloop.pipeline.stages.*`` only; the pure library never imports MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignloop.core.files import file_md5, pid_alive, remember_md5
from alignloop.pipeline import layout

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


def _scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret value replaced by '***' (error messages and tracebacks bound for MLflow)."""
    for sec in secrets:
        text = text.replace(sec, "***")
    return text


def _run_tags(stage: str, dvc_stage: str, round_name: str | None) -> dict[str, str]:
    """The tags every stage run carries; workdir: which working copy ran it, when several share one store."""
    tags = {"stage": stage, "git_commit": git_commit(), "dvc_stage": dvc_stage, "workdir": str(Path.cwd())}
    if round_name is not None:
        tags["round"] = round_name
    return tags


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


# MLflow's own metadata for what kind of work an experiment holds. It does not choose the UI's view: MLflow 3.17 opens
# every experiment in its GenAI view until the user picks "Model training" (or the URL has
# ?workflowType=machine_learning; checked in a browser, see bench/ui_walkthrough.py and the README).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _mlflow(experiment: str):
    """mlflow, pointed at the store and the experiment (created, with its artifact root and kind, where missing)."""
    import mlflow

    # Quiet MLflow's own start-up chatter ("Creating initial MLflow database tables..." on a new store) so the
    # stage's progress, and an error it stops with, stay readable. After the import: importing mlflow sets its level.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    mlflow.set_tracking_uri(uri)
    # Two pipelines starting at once on a fresh sqlite store would both run its schema migrations and one would fail
    # ("table already exists"): the first access (which creates the schema) and the experiment creation are serialised.
    with store_lock(uri):
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            artifact_root = Path(os.environ.get("ALIGNLOOP_ARTIFACT_ROOT", DEFAULT_ARTIFACT_ROOT)).resolve()
            mlflow.create_experiment(experiment, artifact_location=artifact_root.as_uri(), tags=EXPERIMENT_KIND)
        elif not set(EXPERIMENT_KIND.items()) <= set(exp.tags.items()):  # made before the tag existed
            for k, v in EXPERIMENT_KIND.items():
                mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, k, v)
        mlflow.set_experiment(experiment)
    return mlflow


def lock_outs(lock: str = "dvc.lock") -> dict[str, str]:
    """Every stage output dvc.lock records, path -> md5 ({} without a dvc.lock)."""
    import yaml

    if not Path(lock).exists():
        return {}
    data = yaml.load(Path(lock).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    return {o["path"]: o["md5"] for st in (data.get("stages") or {}).values() for o in st.get("outs") or []
            if isinstance(o, dict) and "md5" in o}


def dvc_object(md5: str) -> Path:
    return Path(layout.DVC_CACHE) / md5[:2] / md5[2:]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def remember_dvc_links(paths: list[str | Path], lock: str = "dvc.lock") -> int:
    """Files under ``paths`` that are hard links into DVC's cache (cache.type hardlink) have the md5 their cache
    entry is named by: record those in the hash cache without reading a byte. Returns how many were recorded.
    A link modified after dvc.lock was written (written in place: the cache entry changed with it) is not trusted."""
    outs, n = lock_outs(lock), 0
    if not outs:
        return 0
    written = Path(lock).stat().st_mtime_ns
    for path in map(Path, paths):
        md5 = outs.get(path.as_posix())
        if not md5:
            continue
        if md5.endswith(".dir"):
            try:
                listing = json.loads(dvc_object(md5).read_text())
            except (OSError, ValueError):
                continue
            pairs = [(path / e["relpath"], e["md5"]) for e in listing]
        else:
            pairs = [(path, md5)]
        for f, m in pairs:
            if _same_file(f, dvc_object(m)) and f.stat().st_mtime_ns <= written:
                remember_md5(f, m, layout.HASH_CACHE)
                n += 1
    return n


def dvc_md5(path: str | Path) -> str:
    """The md5 DVC records for ``path`` in dvc.lock: of the bytes for a file; for a directory, of the JSON list of its
    files' ``{"md5", "relpath"}`` sorted by relpath, plus ``.dir`` (dvc-data's tree hash). Computed from the files the
    stage is about to read, so a run's lineage tags are the inputs it used, not the previous execution's; each
    file's md5 comes from the shared hash cache when the file is unchanged since someone hashed it (file_md5)."""
    path = Path(path)
    if path.is_file():
        return file_md5(path, layout.HASH_CACHE)
    entries = sorted((f.relative_to(path).as_posix(), f) for f in path.rglob("*") if f.is_file())
    listing = [{"md5": file_md5(f, layout.HASH_CACHE), "relpath": rel} for rel, f in entries]  # by relpath, as DVC
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def input_hashes(dvc_stage: str, dvc_yaml: str = "dvc.yaml") -> dict[str, str]:
    """``dvc_stage``'s dependencies in dvc.yaml (files and directories; params are logged as params) with their
    DVC md5 now ({} outside a DVC project)."""
    import yaml

    if not Path(dvc_yaml).exists():
        return {}
    stages = (yaml.load(Path(dvc_yaml).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {})
    deps = [d for d in ((stages.get("stages") or {}).get(dvc_stage) or {}).get("deps") or [] if isinstance(d, str)]
    remember_dvc_links([d for d in deps if Path(d).exists()])
    return {d: dvc_md5(d) if Path(d).exists() else "missing" for d in deps}


def _close_killed_runs(mlflow, dvc_stage: str) -> list[str]:
    """Runs of this stage in this working copy left RUNNING by a process that is gone (SIGKILL, OOM, a lost
    machine) are ended KILLED, so the UI never shows a dead stage as running. Runs from another host are left."""
    client = mlflow.MlflowClient()
    me, exp_id = mlflow.active_run().info.run_id, mlflow.active_run().info.experiment_id
    found = client.search_runs([exp_id], filter_string=f"tags.dvc_stage = '{dvc_stage}' and attributes.status = 'RUNNING'",
                               max_results=100)
    closed = []
    for run in found:
        t = run.data.tags
        if run.info.run_id == me or t.get("workdir") != str(Path.cwd()) or t.get("host") != socket.gethostname():
            continue
        if t.get("pid", "").isdigit() and not pid_alive(int(t["pid"])):
            client.set_tag(run.info.run_id, "error", f"killed: its process ({t['pid']}) ended without closing the run; "
                           f"found by the rerun {me} (end time: when it was found)")
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


class _Killed(BaseException):
    """SIGTERM (Ctrl-C's cousin: Prefect cancelling, a scheduler's stop) as an exception, so the run ends KILLED."""


@contextlib.contextmanager
def live_run(experiment: str, dvc_stage: str, stage: str, round_name: str | None = None) -> Iterator[None]:
    """The MLflow run of one stage execution, open for the whole of it (``stage_main`` wraps the stage's body in it):
    started before any work, so the UI shows it RUNNING with its curves as they are logged, and ended FINISHED,
    FAILED (with the error as the ``error`` tag and ``error.txt``) or KILLED (SIGTERM / Ctrl-C; a SIGKILLed one is
    closed as KILLED by the next execution of the stage). Tagged with the stage, round, git commit, working copy,
    host and pid, and ``dvc_dep.<path>``: the DVC md5 of each input as the stage is about to read it — what DVC
    writes into dvc.lock after the stage exits."""
    import signal
    import traceback

    mlflow = _mlflow(experiment)
    tags = {**_run_tags(stage, dvc_stage, round_name), "host": socket.gethostname(), "pid": str(os.getpid()),
            **{f"dvc_dep.{path}": md5 for path, md5 in input_hashes(dvc_stage).items()}}
    secrets = secret_values()

    def on_term(signum, frame):
        raise _Killed(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    mlflow.start_run(run_name=dvc_stage, tags=redact(tags, secrets))
    try:
        _close_killed_runs(mlflow, dvc_stage)
        yield
    except (Exception, KeyboardInterrupt, _Killed) as exc:
        killed = not isinstance(exc, Exception)
        summary = f"{type(exc).__name__}: {exc}" if not killed else f"killed ({exc or 'KeyboardInterrupt'})"
        mlflow.set_tag("error", _scrub(summary, secrets)[:5000])
        mlflow.log_text(_scrub("".join(traceback.format_exception(exc)), secrets), "error.txt")
        mlflow.end_run("KILLED" if killed else "FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)


def log_step(prefix: str = "train."):
    """A ``(logs, step)`` callback that streams numeric training logs into the open stage run as they happen (the
    Trainer's every ``logging_steps``): ``alignloop.ml.training.train_resumable(..., log=log_step())``."""
    import mlflow

    def log(logs: dict, step: int) -> None:
        clean = {f"{prefix}{k}": float(v) for k, v in logs.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if clean and mlflow.active_run() is not None:
            mlflow.log_metrics(clean, step=step)

    return log


@contextlib.contextmanager
def stage_run(experiment: str, stage: str, params: dict, round_name: str | None = None) -> Iterator[_Run]:
    """The stage's MLflow run, to log its params, metrics and artifacts into: the live run ``stage_main`` opened
    (the normal case), or, outside one (a stage function called directly), a run opened and closed here."""
    mlflow = _mlflow(experiment)
    dvc_stage = stage if round_name is None else f"{stage}_{round_name}"
    secrets = secret_values()
    active = mlflow.active_run()
    opened = active is None or active.data.tags.get("dvc_stage") != dvc_stage
    if opened:
        mlflow.start_run(run_name=dvc_stage, tags=redact(_run_tags(stage, dvc_stage, round_name), secrets),
                         nested=active is not None)
    try:
        flat = redact({k: str(v) for k, v in _flatten(params).items()}, secrets)
        # MLflow caps param values at 6000 chars and batches of 100.
        items = [(k, v[:500]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))
        yield _Run(mlflow)
    except BaseException:
        if opened:
            mlflow.end_run("FAILED")
        raise
    else:
        if opened:
            mlflow.end_run("FINISHED")


def content_hash(path: str | Path) -> str:
    """A model's content identity: its DVC md5 (``dvc_md5``: what dvc.lock records for the policy directory)."""
    return dvc_md5(path)
