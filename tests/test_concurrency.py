"""Two pipelines at once: different working copies sharing one MLflow store (tracking and registry) lose and
duplicate nothing, and DVC's lock refuses a second `dvc repro` in the same copy with a clear message.

Both copies log into one experiment and register into one model name — the case where they could collide — with
different seeds, so their policies differ and each round is a separate registry version per copy.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from _project import init_project, project_env

PARAMS = {
    "experiment": "shared",
    "task": {"num_prompts": 80, "sft_per_prompt": 3, "pairs_per_prompt": 4},
    "model": {"max_length": 64, "arch": {"hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                         "intermediate_size": 128, "vocab_size": 512}},
    "sft": {"epochs": 2, "batch_size": 16},
    "reward_model": {"epochs": 2, "batch_size": 16},
    "generate": {"n": 4, "max_new_tokens": 16},
    "dpo": {"epochs": 1, "batch_size": 8},
    "evaluate": {"max_new_tokens": 16, "samples_per_prompt": 2, "kl_samples_per_prompt": 2, "temperature": 1.0},
    "registry": {"model_name": "shared-policy"},
    "rounds": {"r1": {"algo": "dpo", "prev": "sft"}},  # one round each: the two copies register at about the same time
}


@pytest.mark.slow
def test_two_pipelines_share_one_store_and_a_second_repro_in_one_copy_is_refused(tmp_path_factory):
    shared = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{shared}/mlflow.db"
    copies = [init_project(tmp_path_factory.mktemp(f"copy{seed}"), {**PARAMS, "seed": seed}) for seed in (0, 1)]

    def env(root: Path) -> dict:
        return {**project_env(root), "MLFLOW_TRACKING_URI": uri, "ALIGNLOOP_ARTIFACT_ROOT": str(shared / "mlartifacts")}

    logs = [open(root / "repro.log", "w") for root in copies]
    procs = [subprocess.Popen(["dvc", "repro"], cwd=root, env=env(root), stdout=log, stderr=subprocess.STDOUT)
             for root, log in zip(copies, logs)]
    try:
        deadline = time.time() + 300
        while "Running stage" not in (copies[0] / "repro.log").read_text() and time.time() < deadline:
            assert procs[0].poll() is None, (copies[0] / "repro.log").read_text()
            time.sleep(0.2)
        second = subprocess.run(["dvc", "repro"], cwd=copies[0], env=env(copies[0]), capture_output=True, text=True,
                                timeout=300)
        assert procs[0].poll() is None, "the first repro finished before the second could race it"
        # DVC names what blocks it: "'data/raw' is busy, it is being blocked by: (PID n): dvc repro" (or "Unable to
        # acquire lock" when it meets the repo lock first).
        refusal = second.stderr
        assert second.returncode != 0, second.stdout + refusal
        assert ("is busy, it is being blocked by" in refusal and "dvc repro" in refusal) or \
            "Unable to acquire lock" in refusal, refusal
        for root, p in zip(copies, procs):
            assert p.wait(timeout=1800) == 0, (root / "repro.log").read_text()[-4000:]
    finally:
        for p, log in zip(procs, logs):
            if p.poll() is None:
                p.kill()
            log.close()

    import mlflow

    client = mlflow.MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id], max_results=1000)
    for root in copies:
        # resolve only rewrites params.resolved.yaml and logs no run
        stages = [s for s in yaml.safe_load((root / "dvc.yaml").read_text())["stages"] if s != "resolve"]
        per_stage = Counter(r.data.tags["dvc_stage"] for r in runs if r.data.tags.get("workdir") == str(root))
        # Every stage execution of this copy is exactly one run (the reward model's is named like its stage).
        assert per_stage == Counter(stages), (root, per_stage)
    versions = client.search_model_versions("name='shared-policy'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    recorded = []
    for root in copies:
        for r in ("r1",):
            record = json.loads((root / f"data/rounds/{r}/registry.json").read_text())
            v = client.get_model_version("shared-policy", record["version"])
            assert v.tags["round"] == r and str(root) in v.source, (root, r, v.source)
            recorded.append(int(record["version"]))
    assert sorted(recorded) == [1, 2]  # each copy's rounds got versions of their own, none shared or lost
