"""Overhead of the Prefect pipeline flow over plain `dvc repro` on the same stages.

Builds two fresh copies of the project (same code, same params.yaml), runs `dvc repro` in one and
`python -m flows.pipeline` in the other, then a second no-op run of each, and writes wall times to
bench/out/flow_overhead.json and a markdown table to stdout. Runs sequentially: timing two jobs at once on
a small machine measures the contention, not the tool.

    python bench/flow_overhead.py                 # the embedded demo (params.yaml), ~20 min on 2 cores
    python bench/flow_overhead.py --params P.yaml # any other configuration

With PREFECT_API_URL unset the flow starts Prefect's temporary local server, and its start-up (~15 s) is
part of the measured overhead; with a running `prefect server` it is not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


def make_project(root: Path, params: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    shutil.copytree(REPO / "alignloop", root / "alignloop", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(params, root / "params.yaml")
    env = _env(root)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["alignloop", "render"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)


def _env(root: Path) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}


def timed(cmd: list[str], root: Path, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=root, env=_env(root), stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {root}; see {log}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--workdir", type=Path, default=OUT / "flow_overhead")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    runs = (("dvc", ["dvc", "repro"]), ("flow", [sys.executable, "-m", "flows.pipeline", "--project-dir", "."]))
    for kind, _ in runs:  # both copies up front, so both run the same code
        make_project(a.workdir / kind, a.params)
    for kind, cmd in runs:
        root = a.workdir / kind
        first = timed(cmd, root, a.workdir / f"{kind}-first.log")
        noop = timed(cmd, root, a.workdir / f"{kind}-noop.log")
        results[kind] = {"first_s": round(first, 1), "noop_s": round(noop, 1)}
        print(f"{kind}: first run {first:.1f} s, no-op run {noop:.1f} s", flush=True)
    d, f = results["dvc"], results["flow"]
    results["overhead_first_pct"] = round(100 * (f["first_s"] - d["first_s"]) / d["first_s"], 1)
    results["prefect_api"] = os.environ.get("PREFECT_API_URL") or "temporary local server"
    results["cpus"] = os.cpu_count()
    (OUT / "flow_overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| run | `dvc repro` | pipeline flow | overhead |\n|---|---|---|---|")
    print(f"| full pipeline | {d['first_s']:.0f} s | {f['first_s']:.0f} s | {results['overhead_first_pct']:+.1f} % |")
    print(f"| no-op (all up to date) | {d['noop_s']:.1f} s | {f['noop_s']:.1f} s | {f['noop_s'] - d['noop_s']:+.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
