"""Serve the pipeline and round flows as deployments: a cron schedule, manual runs from the UI or CLI.

    prefect server start                       # terminal 1: API + UI at http://127.0.0.1:4200
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                      # terminal 2: this process runs the flow runs
    prefect deployment run 'alignloop-pipeline/alignloop' -p rounds=5 --watch

Runs of one working copy must not overlap (DVC locks the repository during `dvc repro`), so each deployment
runs one flow run at a time and later ones wait.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import serve

from flows.pipeline import pipeline, round_flow
from flows.registry import registry_flow


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    ap.add_argument("--project-dir", default=".", help="working copy the runs use (default: here)")
    ap.add_argument("--name", default="alignloop", help="deployment name (default: alignloop)")
    ap.add_argument("--cron", default="0 2 * * *", help="pipeline schedule, cron syntax (default: 02:00 daily)")
    ap.add_argument("--paused", action="store_true", help="register the schedule paused (manual runs only)")
    a = ap.parse_args(argv)
    project = str(Path(a.project_dir).resolve())
    if not (Path(project) / "params.yaml").exists():
        raise SystemExit(f"{project}/params.yaml not found (fix: --project-dir <your alignloop working copy>)")
    whole = pipeline.to_deployment(
        name=a.name, cron=a.cron, paused=a.paused, concurrency_limit=1, parameters={"project_dir": project},
        tags=["alignloop"], description="Curate → SFT → reward model → rounds → report, by `dvc repro` per stage. "
        "Set `rounds` to add rounds; `overrides` are written into params.yaml.")
    one = round_flow.to_deployment(
        name=a.name, concurrency_limit=1, parameters={"project_dir": project}, tags=["alignloop"],
        description="One round's stages (after bringing what it depends on up to date).")
    reg = registry_flow.to_deployment(
        name=a.name, parameters={"project_dir": project}, tags=["alignloop"],
        description="List, promote or roll back versions of the round policies in the MLflow registry.")
    serve(whole, one, reg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
