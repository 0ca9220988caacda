"""PPO and RAFT rounds alongside DPO, end to end on a reduced embedded configuration.

One fresh DVC project whose rounds mix algorithms: d1 (dpo from SFT) -> p3 (ppo), plus ps (ppo from
SFT) and rf (raft from SFT). The Prefect pipeline flow runs it (under ``prefect_test_harness``); `dvc repro` must
then have nothing left to do. Asserted: each round ran only the stages its algorithm needs; PPO from SFT raises
the held-out gold reward and keeps KL to the reference under its limit; RAFT trains on the best samples and
raises gold too; a PPO stage killed (SIGKILL) after a checkpoint resumes from it and writes the same policy as
the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _project import flow_env, init_project, project_env, read, sh

pytestmark = pytest.mark.in_file_order  # one scenario over one shared project (see the module docstring)

KL_LIMIT = 8.0
PARAMS = {
    "experiment": "algos",
    "seed": 0,
    "task": {"num_prompts": 160, "sft_per_prompt": 4, "pairs_per_prompt": 6, "annotator_temperature": 0.3},
    "model": {"max_length": 64, "arch": {"hidden_size": 96, "num_layers": 2, "num_heads": 4,
                                         "intermediate_size": 256, "vocab_size": 1024}},
    "sft": {"epochs": 4, "lr": 0.004, "batch_size": 32},
    "reward_model": {"epochs": 5, "lr": 0.001, "batch_size": 32},
    "generate": {"n": 4, "max_new_tokens": 24},
    "dpo": {"beta": 0.3, "lr": 0.0005, "epochs": 2, "batch_size": 16, "ref": "prev"},
    "ppo": {"iterations": 12, "rollout_prompts": 48, "max_new_tokens": 24, "kl_limit": KL_LIMIT,
            "checkpoint_every": 2},
    "raft": {"k": 1, "lr": 0.0005, "epochs": 2, "batch_size": 16},
    "evaluate": {"max_new_tokens": 24, "samples_per_prompt": 4, "temperature": 1.0},  # its samples double as KL samples
    "registry": {"enabled": False},
    "orchestration": {"retries": 0},
    "rounds": {
        "d1": {"algo": "dpo", "prev": "sft"},
        "p3": {"algo": "ppo", "prev": "d1"},
        "ps": {"algo": "ppo", "prev": "sft"},
        "rf": {"algo": "raft", "prev": "sft"},
    },
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    root = init_project(tmp_path_factory.mktemp("algos"), PARAMS)
    with flow_env(root), prefect_test_harness(server_startup_timeout=120):
        (root / "flow.json").write_text(json.dumps(pipeline(project_dir=str(root))))
        yield root


def test_each_round_runs_only_its_algorithms_stages(project):
    stages = list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    for r in ("d1",):
        assert {f"generate_{r}", f"score_{r}", f"pairs_{r}", f"dpo_{r}", f"evaluate_{r}"} <= set(stages)
    for r in ("p3", "ps"):
        assert f"ppo_{r}" in stages and not {f"generate_{r}", f"pairs_{r}", f"dpo_{r}"} & set(stages)
    assert {"generate_rf", "score_rf", "raft_rf"} <= set(stages) and not {"pairs_rf", "dpo_rf"} & set(stages)
    ran = [r["stage"] for r in read(project, "flow.json") if r.get("ran")]
    assert [s for s in ran if s in stages] == [s for s in stages if s in ran]  # dvc.yaml order
    assert {"dpo_d1", "ppo_p3", "ppo_ps", "raft_rf"} <= set(ran)


def test_dvc_repro_after_the_mixed_flow_does_nothing(project):
    out = sh(["dvc", "repro"], project).stdout
    assert "Running stage" not in out, out


def test_ppo_from_sft_raises_gold_reward_within_the_kl_limit(project):
    sft, ps = read(project, "data/eval/sft.json"), read(project, "data/rounds/ps/eval.json")
    train = read(project, "data/rounds/ps/train_metrics.json")
    print(f"ppo from sft: gold {sft['gold_reward']:.3f} -> {ps['gold_reward']:.3f}, KL to SFT {ps['kl_to_sft']:.2f}, "
          f"reward {train['score_first']:.3f} -> {train['score_last']:.3f}")
    assert ps["gold_reward"] > sft["gold_reward"] + 0.1
    assert ps["win_rate_vs_sft_gold"] > 0.5
    assert train["score_last"] > train["score_first"]
    assert 0 < train["kl_to_ref_last"] < KL_LIMIT and ps["kl_to_sft"] < KL_LIMIT


def test_ppo_after_a_dpo_round_trains_from_that_rounds_policy(project):
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    d1_policy = next(o["md5"] for o in lock["dpo_d1"]["outs"] if o["path"] == "data/rounds/d1/policy")
    starts = {d["path"]: d["md5"] for d in lock["ppo_p3"]["deps"] if d["path"].endswith("/policy")}
    assert starts == {"data/rounds/d1/policy": d1_policy}  # the policy dpo_d1 wrote, and no other round's
    train = read(project, "data/rounds/p3/train_metrics.json")
    assert train["iterations"] == PARAMS["ppo"]["iterations"] or train["stopped_early"]
    d1, p3 = read(project, "data/rounds/d1/eval.json"), read(project, "data/rounds/p3/eval.json")
    assert p3["kl_to_sft"] > 0 and p3["gold_reward"] != d1["gold_reward"]  # it trained: the policy moved


def test_raft_fine_tunes_on_the_best_samples(project):
    rows = [json.loads(x) for x in (project / "data/rounds/rf/raft.jsonl").read_text().splitlines()]
    scores = [json.loads(x) for x in (project / "data/rounds/rf/scores.jsonl").read_text().splitlines()]
    best = {}
    for s in scores:
        best[s["prompt_id"]] = max(best.get(s["prompt_id"], float("-inf")), s["reward"])
    assert len(rows) == len(best)  # k=1: one per prompt
    assert sorted(r["reward"] for r in rows) == sorted(best.values())
    train = read(project, "data/rounds/rf/train_metrics.json")
    assert train["loss_last"] < train["loss_first"]
    sft, rf = read(project, "data/eval/sft.json"), read(project, "data/rounds/rf/eval.json")
    assert rf["gold_reward"] > sft["gold_reward"]


def test_killed_ppo_stage_resumes_from_its_checkpoint_with_the_same_result(project):
    policy = project / "data/rounds/ps/policy/model.safetensors"
    uninterrupted = policy.read_bytes()
    ckpt_root = project / ".alignloop/ckpt/ps"
    cmd = [sys.executable, "-m", "alignloop.pipeline.stages.ppo", "--round", "ps"]
    proc = subprocess.Popen(cmd, cwd=project, env=project_env(project), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            # Only finished checkpoints: a hidden ".<name>.tmp-*" sibling is one being written (io.atomic_dir).
            states = [p for p in ckpt_root.glob("*/state.pt") if not p.parent.name.startswith(".")]
            if states:
                import torch

                if torch.load(states[0], weights_only=True)["iteration"] >= 4:
                    break
            time.sleep(0.5)
        assert proc.poll() is None, "the stage finished before it could be killed (raise ppo.iterations)"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert policy.read_bytes() == uninterrupted  # the killed run never touched the finished output
    out = sh(cmd, project).stdout
    assert "resumed from iteration" in out, out
    resumed_at = int(out.split("resumed from iteration ")[1].split()[0])
    assert 4 <= resumed_at < PARAMS["ppo"]["iterations"]
    assert policy.read_bytes() == uninterrupted  # same seed, same checkpointed state: the same policy
    assert not ckpt_root.exists()  # cleaned up once the policy is saved
