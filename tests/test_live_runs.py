"""A stage's MLflow run tells the truth while the stage runs: opened before the work and closed after it (FINISHED),
FAILED with the error, KILLED on SIGTERM, closed as KILLED by the next execution after a SIGKILL, with training
curves logged as they happen. (Lineage tags against the final dvc.lock: test_crash_resume.py, on a real project.)

Each test runs a stage entry point (``stage_main`` with the prepare stage's spec) in a subprocess of its own
working directory with its own sqlite store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

STAGE = """
import sys, time
from pathlib import Path
from alignloop.core.files import DataError
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.stages.prepare import SPECS

def body(params, args):
    mode = sys.argv[1]
    Path("started").write_text("1")
    if mode == "fail":
        raise DataError("data/x.jsonl:3: missing field 'prompt' (fix: add it)")
    if mode == "crash":
        raise RuntimeError("a bug")
    if mode == "sleep":
        time.sleep(120)

sys.exit(stage_main(SPECS[0], body, argv=[]))
"""


@pytest.fixture
def stage(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"experiment": "live"}))
    (tmp_path / "stage.py").write_text(STAGE)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(ROOT),
           "ALIGNLOOP_ARTIFACT_ROOT": str(tmp_path / "mlartifacts")}

    def start(mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "stage.py", mode], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    return tmp_path, start


def _runs(root: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("live")
    return sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time) if exp else []


def _wait_started(root: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while not (root / "started").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (root / "started").exists(), proc.communicate()


def test_a_running_stage_shows_as_running_and_finishes_after_its_work(stage):
    root, start = stage
    proc = start("sleep")
    try:
        _wait_started(root, proc)
        (run,) = _runs(root)
        assert run.info.status == "RUNNING" and run.info.end_time is None  # visible while it works
        started_work = (root / "started").stat().st_mtime * 1000
        assert run.info.start_time <= started_work
        assert run.data.tags["dvc_stage"] == "prepare" and run.data.tags["pid"] == str(proc.pid)
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
        exp = client.get_experiment_by_name("live")
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's kind metadata (not the UI view)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    (run,) = _runs(root)
    assert run.info.status == "KILLED" and "killed (signal 15)" in run.data.tags["error"]
    assert run.info.end_time >= started_work


def test_a_failing_stage_leaves_a_failed_run_with_its_error(stage):
    root, start = stage
    out, err = start("fail").communicate(timeout=120)
    # The error is all the user sees: no MLflow start-up chatter on this new store before it (it was there once
    # the run opened before the work), no traceback.
    assert err == "error: data/x.jsonl:3: missing field 'prompt' (fix: add it)\n", err
    (run,) = _runs(root)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "DataError: data/x.jsonl:3: missing field 'prompt' (fix: add it)"
    import mlflow

    text = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db").download_artifacts(run.info.run_id, "error.txt", str(root))
    assert "DataError" in Path(text).read_text()
    proc = start("crash")
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert _runs(root)[-1].info.status == "FAILED" and _runs(root)[-1].data.tags["error"] == "RuntimeError: a bug"


def test_a_sigkilled_stage_s_run_is_closed_as_killed_by_the_next_execution(stage):
    root, start = stage
    proc = start("sleep")
    _wait_started(root, proc)
    proc.kill()  # SIGKILL: the process cannot close its run
    proc.wait()
    (stale,) = _runs(root)
    assert stale.info.status == "RUNNING"
    (root / "started").unlink()
    again = start("ok")
    again.communicate(timeout=120)
    assert again.returncode == 0
    stale, rerun = _runs(root)
    assert rerun.info.status == "FINISHED"
    assert stale.info.status == "KILLED" and f"found by the rerun {rerun.info.run_id}" in stale.data.tags["error"]


def test_training_curves_are_logged_while_training(tmp_path, monkeypatch):
    """train_resumable(..., log=log_step()) inside a live run: every logged loss reaches MLflow before training ends
    (each point's timestamp is before the train() call returned), not replayed afterwards."""
    import mlflow
    import torch
    from transformers import Trainer, TrainingArguments

    from alignloop.ml.training import train_resumable
    from alignloop.pipeline.tracking import live_run, log_step
    from test_resume_mechanisms import Tiny  # a 5-parameter regression model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("ALIGNLOOP_ARTIFACT_ROOT", str(tmp_path / "mlartifacts"))

    xs = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), max_steps=8, logging_steps=1, report_to=[],
                             per_device_train_batch_size=4, use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=Tiny(), args=args, train_dataset=[{"x": x, "labels": x.sum()} for x in xs])
    with live_run("live", "sft", "sft"):
        run_id = mlflow.active_run().info.run_id
        train_resumable(trainer, "t", log=log_step())
        returned = time.time() * 1000
        time.sleep(0.05)
    history = mlflow.MlflowClient().get_metric_history(run_id, "train.loss")
    assert [m.step for m in history] == list(range(1, 9))
    assert all(m.timestamp <= returned for m in history)
    assert mlflow.get_run(run_id).info.status == "FINISHED"


def test_dvc_md5_is_what_dvc_records(tmp_path):
    """The lineage hash of a file and of a directory (nested, names that sort differently as strings and as path
    parts) equals DVC's own, from `dvc add` in a real DVC repository."""
    from alignloop.pipeline.tracking import dvc_md5

    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    d = tmp_path / "model"
    (d / "a").mkdir(parents=True)
    (d / "a-b").mkdir()
    (d / "a" / "w.safetensors").write_bytes(b"\x00weights")
    (d / "a-b" / "x.json").write_text('{"k": 1}')
    (d / "a.txt").write_text("top")
    (tmp_path / "f.jsonl").write_text('{"id": 1}\n')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["dvc", "add", "-q", "model", "f.jsonl"], cwd=tmp_path, check=True, env=env)
    for name in ("model", "f.jsonl"):
        recorded = yaml.safe_load((tmp_path / f"{name}.dvc").read_text())["outs"][0]["md5"]
        assert dvc_md5(tmp_path / name) == recorded, name
