"""A Ray cluster of several nodes on one machine, and where a round's shard tasks ran on it.

    python bench/ray_cluster.py --project-dir . --round r1     # after `make repro` (the demo's data/)

starts ``ray start --head`` (no CPUs: it only schedules) and two worker nodes as separate processes (one CPU
each, custom resources ``node_b`` / ``node_c``), the same commands one runs on separate machines; deletes the
round's samples and scores (and their dvc.lock entries and DVC's run cache, moved aside and put back, so DVC
computes them rather than restoring them); runs the round flow with ``--ray-address`` against the cluster and
``orchestration.generate_shards = score_shards = 2``; and prints, from Ray's own task records
(``ray.util.state.list_tasks``), which node ran each shard and for how long, then checks the merged outputs are
the bytes they were. Results go to bench/out/ray_cluster.json.

``LocalRayCluster`` is also what tests/test_pipeline_e2e.py runs its multi-node checks on.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """``ray start --head`` plus one ``ray start --address`` per worker node, each its own process tree.

    Ray 2.5x turns token authentication on for clusters started by ``ray start --head``; every node and every
    driver then needs the token: here a fresh random one in ``RAY_AUTH_TOKEN`` (with ``RAY_AUTH_MODE=token``),
    set in this process' environment too, so the flow's ``ray.init(address=...)`` and its stage subprocesses
    find it. On real machines: the same two variables on each node (never in params.yaml or a log).
    """

    def __init__(self, workers: dict[str, int], head_cpus: int = 0):
        self.workers, self.head_cpus = workers, head_cpus
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a length limit
        self.port, self.dashboard_port = _free_port(), _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self._node_ids: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}

    def _env(self) -> dict[str, str]:
        return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.temp / f"{name}.log", "w")
        # --block: the `ray start` process stays up as the parent of the node's processes, so the node can be
        # killed as one process tree (a machine lost), and ends when the node does.
        self.procs[name] = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--block", *args],
                                            env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def __enter__(self) -> LocalRayCluster:
        for key, value in (("RAY_AUTH_MODE", "token"), ("RAY_AUTH_TOKEN", secrets.token_hex(32))):
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        try:
            self._start_nodes()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_nodes(self) -> None:
        self._start("head", ["--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
                             f"--temp-dir={self.temp}", "--include-dashboard=true",
                             f"--dashboard-port={self.dashboard_port}", "--disable-usage-stats"])
        self.wait_for_nodes(1)
        for k, (name, cpus) in enumerate(self.workers.items()):  # one at a time: nodes joining together can time out
            self._start(name, [f"--address={self.address}", f"--num-cpus={cpus}",
                               f"--resources={json.dumps({name: 1})}", "--disable-usage-stats"])
            self.wait_for_nodes(2 + k)
        self._node_ids = self._query_node_ids()  # now: a node killed later is gone from Ray's list of nodes

    def alive_nodes(self) -> int:
        """Nodes whose `ray start` has reported the node registered ("Ray runtime started.") and still runs."""
        return sum(p.poll() is None and "Ray runtime started." in (self.temp / f"{k}.log").read_text()
                   for k, p in self.procs.items())

    def wait_for_nodes(self, n: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.alive_nodes() < n:
            dead = [k for k, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {k}\n" + (self.temp / f"{k}.log").read_text()[-2000:] for k in self.procs)
                raise RuntimeError(f"Ray cluster: {n} node(s) not up ({dead or 'timeout'}):\n{logs}")
            time.sleep(0.25)

    def tree(self, name: str) -> list[int]:
        """PIDs of node ``name``'s processes: its `ray start`, raylet, workers and whatever they started."""
        import psutil

        try:
            top = psutil.Process(self.procs[name].pid)
            return [top.pid] + [c.pid for c in top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, name: str) -> None:
        """SIGKILL every process of node ``name`` at once: the node is gone as a crashed machine would be."""
        for pid in self.tree(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs[name].wait(timeout=30)

    def node_ids(self) -> dict[str, str]:
        """Ray node id of each named worker node, as recorded when the cluster came up (killed ones included)."""
        return dict(self._node_ids)

    def _query_node_ids(self) -> dict[str, str]:
        """Ray node id of each named worker node (from its custom resource), via a short-lived driver."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                "print(json.dumps({k: n['NodeID'] for n in ray.nodes() for k in n['Resources'] if k.startswith('node_')}))"
                % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self._env(), capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def tasks(self) -> list[dict]:
        """Ray's records of every task attempt on the cluster: name, node, state, attempt, times (state API)."""
        code = ("import json, ray; from ray.util.state import list_tasks; "
                "print(json.dumps([{k: t.get(k) for k in ('name', 'node_id', 'state', 'attempt_number', 'error_type',"
                " 'start_time_ms', 'end_time_ms')} for t in (x.__dict__ if hasattr(x, '__dict__') else x for x in "
                "list_tasks(address=%r, detail=True, limit=10000, raise_on_missing_output=False))]))"
                % f"http://127.0.0.1:{self.dashboard_port}")
        out = subprocess.run([sys.executable, "-c", code], env=self._env(), capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def __exit__(self, *exc) -> None:
        for name in reversed(list(self.procs)):
            if self.procs[name].poll() is None:
                self.kill(name)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.temp, ignore_errors=True)


def shard_placement(tasks: list[dict], nodes: dict[str, str]) -> list[dict]:
    """One row per shard task attempt: which named node ran it, its final state, seconds (task records)."""
    by_id = {v: k for k, v in nodes.items()}
    rows = []
    for t in sorted(tasks, key=lambda t: (t["name"], t["attempt_number"])):
        if "-shard-" not in (t["name"] or ""):
            continue
        secs = (t["end_time_ms"] - t["start_time_ms"]) / 1000 if t["end_time_ms"] and t["start_time_ms"] else None
        rows.append({"task": t["name"], "attempt": t["attempt_number"], "node": by_id.get(t["node_id"], t["node_id"]),
                     "state": t["state"], "seconds": secs, "error": t["error_type"]})
    return rows


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project-dir", default=".")
    ap.add_argument("--round", default="r1")
    a = ap.parse_args(argv)
    root = Path(a.project_dir).resolve()
    outs = [root / f"data/rounds/{a.round}/samples.jsonl", root / f"data/rounds/{a.round}/scores.jsonl"]
    before = [p.read_bytes() for p in outs]
    # A Prefect server every node reaches (PREFECT_API_URL inherited by the `ray start` processes), as on real
    # machines: without one, each Ray worker would start a temporary server of its own.
    from bench.ui_walkthrough import api, free_port, start, stop, wait

    port = free_port()
    os.environ.update({"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_HOME": tempfile.mkdtemp(prefix="prefect-home-")})
    server = start([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                    str(port)], Path(os.environ["PREFECT_HOME"]) / "server.log", dict(os.environ))
    wait("the Prefect server", lambda: api(f"http://127.0.0.1:{port}/api/health"))
    try:
        return _run(root, a.round, outs, before)
    finally:
        stop([server])


def _run(root: Path, round_name: str, outs: list[Path], before: list[bytes]) -> int:
    from bench._out import write_result
    from flows.pipeline import round_flow
    from alignloop.pipeline.params_edit import edit_params

    edit = {"orchestration.generate_shards": 2, "orchestration.score_shards": 2}
    # Restored afterwards: the flow writes params (and re-renders params.resolved.yaml); dvc.lock loses the two
    # stages' entries below, and DVC's run cache is moved aside, so DVC computes them (not restores them).
    saved = {f: (root / f).read_text() for f in ("params.yaml", "params.resolved.yaml", "dvc.lock")}
    runs, runs_aside = root / ".dvc/cache/runs", root / ".dvc/cache/runs.ray-bench"
    with LocalRayCluster({"node_b": 1, "node_c": 1}) as cluster:
        try:
            edit_params(root / "params.yaml", overrides=edit)  # orchestration: no DVC stage reads it
            lock = yaml.safe_load(saved["dvc.lock"])
            for stage in (f"generate_{round_name}", f"score_{round_name}"):
                del lock["stages"][stage]
            (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
            if runs.exists():
                runs.rename(runs_aside)
            for p in outs:
                p.unlink()
            from prefect_ray import RayTaskRunner

            import ray

            ray.init(address=cluster.address, logging_level="ERROR")
            t0 = time.perf_counter()
            round_flow.with_options(task_runner=RayTaskRunner())(round_name, str(root))
            seconds = time.perf_counter() - t0
            ray.shutdown()
        finally:
            for f, text in saved.items():
                (root / f).write_text(text)
            if runs_aside.exists():
                shutil.rmtree(runs, ignore_errors=True)
                runs_aside.rename(runs)
        rows = shard_placement(cluster.tasks(), cluster.node_ids())
    same = [p.read_bytes() == b for p, b in zip(outs, before)]
    for r in rows:
        print(f"{r['task']:<32} attempt {r['attempt']}  {r['node']:<7} {r['state']:<9} {r['seconds'] or 0:6.1f} s")
    print(f"round flow {seconds:.1f} s; merged outputs identical to the single-process ones: {dict(zip(['samples', 'scores'], same))}")
    write_result("ray_cluster", {"round": round_name, "flow_seconds": seconds, "shards": rows,
                                 "identical": dict(zip(["samples", "scores"], same))})
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
