"""Training in two processes on the CPU, through the relaunch path multi-GPU machines take (`accelerate launch`,
DDP over gloo here): `train.processes: 2` on a reduced project's SFT stage, compared with the same stage in one
process; then the two-process run SIGKILLed (its whole process group: dvc, the stage, accelerate, both workers)
after its first checkpoint, refused with the fix when rerun with one process, and resumed with two (measured
separately: the resumed run's weights equal the uninterrupted two-process run's exactly).

One scenario, one project (each step needs the one before)."""

from __future__ import annotations

import json
import subprocess
import time

import yaml
from safetensors.torch import load_file

from _project import init_project, kill_during, sh

PARAMS = {
    "experiment": "mp",
    "seed": 0,
    "task": {"num_prompts": 48, "sft_per_prompt": 4, "pairs_per_prompt": 2},
    "model": {"max_length": 64, "arch": {"hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                         "intermediate_size": 128, "vocab_size": 512}},
    # a global batch of 8 (4 per worker with two), checkpoints every 5 steps of the ~20
    "sft": {"epochs": 1, "lr": 0.004, "batch_size": 8, "checkpoint_every": 5},
    "rounds": {},
}
# One process vs two: the same 8 examples per step (accelerate hands worker k every other batch of 4 of the same
# seeded order), the gradient all-reduced as the mean of the two halves' means. Token-level losses are averaged
# over all tokens of the step in both (transformers' average_tokens_across_devices), so what is left is float
# summation order: measured max |w1 - w2| = 2.2e-05 here (weights of order 0.1), ~20 steps, killed and resumed.
WEIGHT_TOL = 1e-4


def _set_processes(root, n: int) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"] = {"processes": n}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["alignloop", "render"], root)


def _weights(root):
    return load_file(str(root / "data/models/sft/model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _sft_runs(root) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("mp")
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("dvc_stage") == "sft"]


def _workers_alive(root, grace_s: float = 5.0) -> list[str]:
    """Command lines of sft stage processes (launcher or worker) of this project (matched by working dir) still
    running ``grace_s`` after the kill. The kernel SIGKILLs the workers when the launcher dies (PR_SET_PDEATHSIG),
    but a loaded machine takes a moment to tear a killed process down; a worker that escaped the kill would still be
    training after the grace period (a training step here takes well under a second)."""
    import os

    def alive() -> list[str]:
        out = subprocess.run(["pgrep", "-af", "alignloop.pipeline.stages.sft"], capture_output=True, text=True).stdout
        found = []
        for line in out.splitlines():
            pid = line.split(maxsplit=1)[0]
            try:
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
                if state not in "ZX" and os.path.realpath(f"/proc/{pid}/cwd") == os.path.realpath(root):
                    found.append(line)
            except (OSError, IndexError):  # it ended meanwhile
                pass
        return found

    deadline = time.monotonic() + grace_s
    while (found := alive()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def test_two_cpu_processes_train_like_one_and_resume_only_with_two(tmp_path):
    root = init_project(tmp_path, PARAMS)
    sh(["dvc", "repro", "sft"], root)
    one = _weights(root)
    assert json.loads((root / "data/models/sft.metrics.json").read_text())["world_size"] == 1

    # two processes (DVC reruns sft: train.processes is a param it reads), SIGKILLed — dvc, the stage, accelerate
    # and both workers — after the first checkpoint: nothing of it survives the kill
    _set_processes(root, 2)
    text = kill_during(root, "sft", lambda r, log: any(r.glob(".alignloop/ckpt/sft/*/checkpoint-*/COMPLETE")))
    assert "no CUDA GPU: CPU processes, gloo, relaunching" in text and "--num_processes 2" in text, text[-3000:]
    assert _workers_alive(root) == []
    # and none of it wrote the stage's output afterwards (DVC removed it before running the stage)
    time.sleep(2)
    assert not (root / "data/models/sft").exists()
    (ckpt,) = root.glob(".alignloop/ckpt/sft/*")
    assert (ckpt / "WORLD_SIZE").read_text() == "2"

    # one process may not resume it: a clear error with the fix, and the checkpoint kept
    _set_processes(root, 1)
    refused = sh(["dvc", "repro", "sft"], root, check=False)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert "was written by 2 training process(es); this run has 1" in said and "train.processes: 2" in said, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert any(ckpt.glob("checkpoint-*/COMPLETE"))

    # two processes resume it, train, and only rank 0 saves
    _set_processes(root, 2)
    log = sh(["dvc", "repro", "sft"], root)
    text = log.stdout + log.stderr
    assert "sft: resuming from" in text and text.count("saved data/models/sft/") == 1, text[-3000:]
    m2 = json.loads((root / "data/models/sft.metrics.json").read_text())
    assert m2["world_size"] == 2 and m2["loss_last"] < m2["loss_first"], m2
    # the same training as one process (killed and resumed on the way), yet not the same run
    diff = _max_diff(one, _weights(root))
    print(f"max |w(1 process) - w(2 processes, killed and resumed)| = {diff:.3g}")
    assert 0 < diff < WEIGHT_TOL, diff
    # one MLflow run per execution, not one per worker: finished, killed (closed by the next), failed, finished
    runs = _sft_runs(root)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED", "KILLED"], [r.info for r in runs]
    assert json.loads(sh(["dvc", "status", "--json", "sft"], root).stdout or "{}") == {}  # sft and what it reads
