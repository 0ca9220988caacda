"""`make test` runs two xdist workers on this machine's cores: each worker, and every stage process it starts, must
take its share of the cores (conftest.py sets OMP_NUM_THREADS). This once silently failed — the workers inherited
the controller's value — and every training stage ran 2 threads beside another 2-thread stage, up to 5x slower."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROBE = '''
import os

def test_a():
    open(os.environ["PROBE_OUT"] + "-" + os.environ["PYTEST_XDIST_WORKER"], "w").write(os.environ["OMP_NUM_THREADS"])

def test_b():
    test_a()
'''


def _run(tmp_path: Path, extra_env: dict[str, str]) -> set[str]:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "ALIGNLOOP_TEST_THREADS_SET") and not k.startswith("PYTEST_")}
    env.update(extra_env, PROBE_OUT=str(tmp_path / "omp"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "load", "-p", "no:randomly",
                           "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = sorted(tmp_path.glob("omp-gw*"))
    assert found, proc.stdout
    return {p.read_text() for p in found}


def test_each_xdist_worker_gets_its_share_of_the_cores(tmp_path):
    assert _run(tmp_path, {}) == {str(max(1, (os.cpu_count() or 1) // 2))}


def test_a_value_the_user_exported_is_kept(tmp_path):
    assert _run(tmp_path, {"OMP_NUM_THREADS": "3"}) == {"3"}
