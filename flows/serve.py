"""Serve the pipeline and round flows as deployments: a cron schedule, manual runs from the UI or CLI.

    prefect server start                       # terminal 1: API + UI at http://127.0.0.1:4200
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                      # terminal 2: this process runs the flow runs
    prefect deployment run 'alignloop-pipeline/pipeline-on-schedule' -p rounds=5 --watch

Deployments: ``alignloop-pipeline/pipeline-on-schedule`` (the whole loop, on a cron schedule or by hand),
``alignloop-round/one-round-on-demand`` and ``alignloop-registry/registry-operations`` (list, promote, roll back).
Runs of one working copy must not overlap (DVC locks the repository during `dvc repro`), so each deployment
runs one flow run at a time and later ones wait.

The deployments are served by a child process; this one only supervises it: SIGTERM or Ctrl-C asks the child to
stop (Prefect's graceful shutdown) and, if it has not within ``--stop-timeout`` seconds — it retries its API calls
when the Prefect server is already gone — kills it, so stopping never hangs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path

from prefect import serve
from prefect.utilities.callables import ParameterSchema

from alignloop.core.config import load_params
from flows.forms import current_values, with_current_values
from flows.pipeline import pipeline, round_flow
from flows.registry import registry_flow


DEPLOYMENTS = ("pipeline-on-schedule", "one-round-on-demand", "registry-operations")


def _serve(project: str, prefix: str, cron: str, paused: bool) -> None:
    names = [f"{prefix}-{n}" if prefix else n for n in DEPLOYMENTS]
    whole = pipeline.to_deployment(
        name=names[0], cron=cron, paused=paused, concurrency_limit=1, parameters={"project_dir": project},
        tags=["alignloop"], description="Curate → SFT → reward model → rounds → report, by `dvc repro` per stage, "
        "on a cron schedule (or Run → Custom run). Set `rounds` to add rounds; the round settings and `overrides` are "
        "written into params.yaml, so `dvc repro` reproduces the run.")
    # The form's empty/0 fields keep params.yaml's values; its field descriptions say what those are (as of now:
    # the form is drawn from the schema registered here, so a restart of flows.serve refreshes them). Prefect has no
    # public setter for a deployment's parameter schema; the pinned version's attribute is checked by the tests.
    whole._parameter_openapi_schema = ParameterSchema(**with_current_values(
        whole._parameter_openapi_schema.model_dump(),
        current_values(load_params(Path(project) / "params.yaml").resolved())))
    one = round_flow.to_deployment(
        name=names[1], concurrency_limit=1, parameters={"project_dir": project}, tags=["alignloop"],
        description="One round's stages on demand (after bringing what it depends on up to date).")
    reg = registry_flow.to_deployment(
        name=names[2], parameters={"project_dir": project}, tags=["alignloop"],
        description="List, promote or roll back versions of the round policies in the MLflow registry.")
    serve(whole, one, reg)


def supervise(target, args: tuple, stop_timeout: float) -> int:
    """Run ``target(*args)`` in a child process until it ends or this process is told to stop."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args, name="flows.serve")
    child.start()
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()
        if child.is_alive() and signum == signal.SIGTERM:  # Ctrl-C already reached the child (same process group)
            os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while child.is_alive() and not stopping.is_set():
        child.join(0.5)
    if stopping.is_set():
        child.join(stop_timeout)
        if child.is_alive():
            print(f"flows.serve: the runner had not stopped after {stop_timeout:.0f} s (is the Prefect server gone?); "
                  "killed it", file=sys.stderr, flush=True)
            child.kill()
            child.join()
        return 0
    return child.exitcode or 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    ap.add_argument("--project-dir", default=".", help="working copy the runs use (default: here)")
    ap.add_argument("--name", default="", help="prefix for the deployment names, e.g. the working copy's name when "
                    "several are served on one Prefect server (default: none)")
    ap.add_argument("--cron", default="0 2 * * *", help="pipeline schedule, cron syntax (default: 02:00 daily)")
    ap.add_argument("--paused", action="store_true", help="register the schedule paused (manual runs only)")
    ap.add_argument("--stop-timeout", type=float, default=20.0,
                    help="seconds to wait for a graceful stop before killing the runner (default: 20)")
    a = ap.parse_args(argv)
    project = str(Path(a.project_dir).resolve())
    if not (Path(project) / "params.yaml").exists():
        raise SystemExit(f"{project}/params.yaml not found (fix: --project-dir <your alignloop working copy>)")
    return supervise(_serve, (project, a.name, a.cron, a.paused), a.stop_timeout)


if __name__ == "__main__":
    sys.exit(main())
