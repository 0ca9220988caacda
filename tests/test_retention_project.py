"""Retention on a real DVC project with a real MLflow registry: three rounds' "policies" (tiny stand-in files that
share a tokenizer file, as real rounds do), r1 the champion and r3 the candidate, `retention.keep_last: 1`.
Only r2 may go; the champion's weights and the object the rounds share stay in the cache; `alignloop repro` and
the flow's stale check leave r2 dropped but still re-run a stage whose output went missing another way; a stage
that needs r2 fails with the fix; `--restore` brings r2 back byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ROUNDS = ["r1", "r2", "r3"]


def _policy(r: str) -> str:
    return f"data/rounds/{r}/policy"


def _stages() -> dict:
    # Each round's "training" writes its weights from its start policy's and the same tokenizer file as every round.
    stages, prev = {}, "data/models/sft"
    stages["sft"] = {"cmd": "mkdir -p data/models/sft && printf tok > data/models/sft/tokenizer.json && "
                            "printf sft-weights > data/models/sft/model.safetensors", "outs": ["data/models/sft"]}
    for r in ROUNDS:
        out = _policy(r)
        stages[f"train_{r}"] = {"cmd": f"mkdir -p {out} && printf tok > {out}/tokenizer.json && "
                                       f"{{ printf {r}-; cat {prev}/model.safetensors; }} > {out}/model.safetensors",
                                "deps": [prev], "outs": [out]}
        stages[f"eval_{r}"] = {"cmd": f"wc -c {out}/model.safetensors > data/rounds/{r}/eval.txt",
                               "deps": [out], "outs": [f"data/rounds/{r}/eval.txt"]}
        prev = out
    return {"stages": stages}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("retention")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    params = {"experiment": "rt", "rounds": {r: {"algo": "dpo", "prev": p} for r, p in zip(ROUNDS, ["sft", *ROUNDS])},
              "retention": {"keep_last": 1, "gc": True}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text(yaml.safe_dump(_stages(), sort_keys=False))

    def run(*args, check=True):
        proc = subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert not check or proc.returncode == 0, f"{args}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "config", "--local", "cache.type", "hardlink,copy")  # what `make init` sets here
    run("dvc", "repro", "-q")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    try:
        from alignloop.pipeline import registry
        from alignloop.pipeline.tracking import lock_outs

        outs = lock_outs(str(root / "dvc.lock"))
        for r in ROUNDS:  # r1 passes the gate, r2 and r3 do not: champion v1 (r1), candidate v3 (r3)
            registry.register_round(name="rt-policy", round_name=r, source=str(root / _policy(r)),
                                    policy_md5=outs[_policy(r)], run_id=None, tags={}, promote=r == "r1",
                                    decision="test")
        yield root, run, outs
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def _object(root: Path, md5: str) -> Path:
    return root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]


def _file_objects(root: Path, dir_md5: str) -> dict[str, Path]:
    return {e["relpath"]: _object(root, e["md5"]) for e in json.loads(_object(root, dir_md5).read_text())}


def test_retention_drops_old_rounds_but_never_the_champion_and_repro_leaves_them_dropped(project, monkeypatch):
    root, run, outs = project
    objs = {r: _file_objects(root, outs[_policy(r)]) for r in ROUNDS}
    lock_before = (root / "dvc.lock").read_bytes()

    dry = run(sys.executable, "-m", "alignloop", "retain", "--dry-run").stdout
    assert "would drop r2" in dry and "keeping r1 (champion)" in dry, dry
    assert (root / _policy("r2")).is_dir()  # a dry run deletes nothing

    # the pipeline flow's last step (its task body; Prefect's logger swapped for a list of lines)
    import logging

    import flows.pipeline as fp
    lines = []
    logger = logging.getLogger("retention-test")
    logger.info = lambda msg, *a: lines.append(msg % a if a else msg)
    monkeypatch.setattr(fp, "get_run_logger", lambda: logger)
    fp.apply_retention.fn(str(root))
    out = "\n".join(lines)
    assert "dropped r2" in out, out
    assert not (root / _policy("r2")).exists()
    assert not objs["r2"]["model.safetensors"].exists()  # r2's own weights left the cache too
    assert objs["r2"]["tokenizer.json"].exists()  # the file every round shares stayed
    for r in ("r1", "r3"):  # the champion (older than keep_last) and the last round are whole
        assert (root / _policy(r) / "model.safetensors").read_bytes().startswith(r.encode())
        assert all(p.exists() for p in objs[r].values())
    record = json.loads((root / ".alignloop/retention.json").read_text())["dropped"]
    assert list(record) == ["r2"] and record["r2"]["md5"] == outs[_policy("r2")] and record["r2"]["bytes"] > 0

    from alignloop.pipeline import registry
    tags = {v["round"]: v["tags"] for v in registry.versions("rt-policy")}
    assert "dropped by retention" in tags["r2"]["weights"] and "weights" not in tags["r1"]  # seen in the MLflow UI

    # DVC itself sees the drop; the flow's stale check and `alignloop repro` do not re-train r2 for it
    from alignloop.pipeline.retention import dropped_paths, stale_after_retention
    status = json.loads(run("dvc", "status", "--json").stdout)
    assert {"train_r2", "eval_r2", "train_r3"} <= set(status)
    assert stale_after_retention(status, dropped_paths(root)) == []
    rep = run(sys.executable, "-m", "alignloop", "repro")
    assert "Running stage" not in rep.stdout + rep.stderr, rep.stdout
    assert (root / "dvc.lock").read_bytes() == lock_before and not (root / _policy("r2")).exists()

    # an output missing for another reason (a killed run) is re-made, and r2 still is not
    (root / "data/rounds/r3/eval.txt").unlink()
    rep = run(sys.executable, "-m", "alignloop", "repro")
    assert "Running stage 'eval_r3'" in rep.stdout and "train_r2" not in rep.stdout.split("allow-missing")[0], rep.stdout
    assert (root / "data/rounds/r3/eval.txt").exists() and not (root / _policy("r2")).exists()

    # a stage that has to run and reads r2's weights stops the flow with the fix, before any DVC call
    from alignloop.core.config import load_params
    from alignloop.pipeline.retention import RetentionError
    from flows.plan import read_plan

    params = load_params(root / "params.yaml")
    plan = read_plan(root, ROUNDS)
    with pytest.raises(RetentionError, match=r"train_r3 must run but reads data/rounds/r2/policy.*--restore"):
        fp._step("train_r3", str(root), params, plan, [], {"train_r3"}, set())

    # restore: no DVC remote, so its stage runs again and makes the same bytes; nothing downstream is stale
    out = run(sys.executable, "-m", "alignloop", "retain", "--restore", "r2").stdout
    assert "re-ran train_r2" in out, out
    assert (root / _policy("r2") / "model.safetensors").read_bytes() == b"r2-r1-sft-weights"
    assert json.loads(run("dvc", "status", "--json").stdout) == {}
    assert not (root / ".alignloop/retention.json").exists() or "r2" not in json.loads(
        (root / ".alignloop/retention.json").read_text())["dropped"]
    assert "weights" not in {v["round"]: v["tags"] for v in registry.versions("rt-policy")}["r2"]

    # promote r2 by hand: now it is the champion and r1 the rollback target, so nothing is left to drop
    registry.promote("rt-policy", "2", reason="test")
    from alignloop.pipeline.retention import plan as retention_plan
    p = retention_plan(root, params)
    assert p["drop"] == {} and p["protected"] == {"r1": "rollback target", "r2": "champion", "r3": "candidate"}
