"""A round's IO path at (a small) model scale through the real `dvc repro`, alignloop's tracking, fingerprints and
registry (bench/scale_round.py's project, 20 MB of weights): with the project's DVC config (cache.type
reflink,hardlink,copy) a policy is stored once, not once in the workspace and again in the cache, and no stage of
the round reads its weights to hash them: DVC's own hash at commit is the only pass."""

from __future__ import annotations

import os

from _project import BIN, REPO


def test_a_round_hashes_its_weights_only_in_dvc_and_stores_them_once(tmp_path):
    from bench.scale_round import run_size

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db",
           "PYTHONPATH": str(REPO)}
    res = run_size(0.02, tmp_path, env, cache_type="hardlink,copy")  # what `make init` sets on a filesystem like this
    assert res["cache_type"] == "hardlink,copy"
    r = res["round"]
    assert r["loads"] == 5 and r["registry_s"] > 0  # the round did load its policies and register one
    # alignloop's own hashing read no weight byte: every stage found them linked into DVC's cache
    assert r["weight_passes"] < 0.01, r
    # workspace + cache hold each policy once (two policies: sft and r1)
    assert 0.95 < res["disk"]["per_policy_x"] <= 1.1, res["disk"]
    assert res["up_to_date"]  # and DVC agrees that everything it linked is what it recorded
