"""Prefect tasks that run the pipeline: one DVC stage, or one generation shard.

Prefect's result caching is off: DVC decides what is stale and skips the rest, so a task always asks DVC.
Retries (count and delay from ``orchestration`` in params.yaml, set by the flow with ``with_options``) cover
transient failures — a crash, a busy DVC lock, a lost GPU — but not a stage's own clear error (bad params or
data exit with code 2), which would fail the same way again.
"""

from __future__ import annotations

import re
import sys
import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks._proc import StageFailed, deterministic_failure, error_text, stage_env, stream
from tasks.gpu import gpu_slot

RUNNING = re.compile(r"^Running stage '([^']+)'")


def _retry_unless_deterministic(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as exc:
        return exc.retryable
    except Exception:  # noqa: BLE001 - anything else (a crash in the task itself) may be transient
        return True
    return True


@task(name="dvc-stage", task_run_name="{stage}", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE,
      retry_condition_fn=_retry_unless_deterministic, tags=["dvc"])
def run_stage(stage: str, project_dir: str, devices: list[str] | None = None, single_item: bool = True,
              targets: list[str] | None = None, current: bool = False) -> dict:
    """``dvc repro [--single-item] <stage>`` in ``project_dir``; GPU stages pass ``devices`` to take a slot.

    ``single_item``: the flows run stages in dvc.yaml order, so upstream is already current. ``targets`` (with
    ``single_item=False``) runs several stages and whatever they depend on under the name ``stage``.
    ``current``: the flow already knows from ``dvc status`` that the stage is up to date; no DVC call.
    """
    log = get_run_logger()
    if current:
        log.info("stage %s is up to date (dvc status), skipping", stage)
        return {"stage": stage, "ran": False, "ran_stages": [], "seconds": 0.0, "device": None}
    cmd = [sys.executable, "-m", "dvc", "repro", *(["--single-item"] if single_item else []), *(targets or [stage])]
    t0 = time.perf_counter()
    with gpu_slot(devices or []) as device:
        if device is not None:
            log.info("stage %s on GPU %s", stage, device)
        code, lines = stream(cmd, project_dir, stage_env(device), log.info)
    if code != 0:
        raise StageFailed(f"stage '{stage}'", code, error_text(lines), retryable=not deterministic_failure(lines))
    ran = [m.group(1) for m in map(RUNNING.match, lines) if m]
    return {"stage": stage, "ran": bool(ran), "ran_stages": ran, "seconds": round(time.perf_counter() - t0, 2), "device": device}


def _ray_node() -> str | None:
    """The Ray node this process runs on, when it is a Ray worker (the task runs under the Ray task runner)."""
    if "ray" not in sys.modules:
        return None
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


@task(name="stage-shard", task_run_name="{kind}-{round_name}-shard-{index}-of-{count}", retries=1,
      retry_delay_seconds=10, cache_policy=NO_CACHE, retry_condition_fn=_retry_unless_deterministic,
      tags=["gpu-shard"])
def stage_shard(kind: str, round_name: str, index: int, count: int, project_dir: str,
                devices: list[str] | None = None) -> dict:
    """One shard of a round's ``kind`` stage (generate or score) into the shard cache; the DVC stage merges them.

    Runs as a Ray task under the Ray task runner, so it must not rely on the flow process' working directory.
    A shard's file is written atomically once complete, so a shard killed with its node and run again elsewhere
    leaves one copy: the merge never sees a partial or a duplicate shard.
    """
    log = get_run_logger()
    cmd = [sys.executable, "-m", f"alignloop.pipeline.stages.{kind}", "--round", round_name, "--shard", f"{index}/{count}"]
    t0 = time.perf_counter()
    with gpu_slot(devices or []) as device:
        code, lines = stream(cmd, project_dir, stage_env(device), log.info)
    if code != 0:
        raise StageFailed(f"{kind} shard {index}/{count} of {round_name}", code, error_text(lines),
                          retryable=not deterministic_failure(lines))
    return {"kind": kind, "shard": index, "seconds": round(time.perf_counter() - t0, 2), "device": device,
            "ray_node": _ray_node()}
