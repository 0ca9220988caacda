"""PPO and RAFT rounds alongside DPO, end to end on a reduced embedded configuration.

One fresh DVC project whose rounds mix algorithms: d1 (dpo from SFT) -> p3 (ppo), plus ps (ppo from
SFT) and rf (raft from SFT). The Prefect pipeline flow runs it (under ``prefect_test_harness``); `dvc repro` must
then have nothing left to do. Asserted: each round ran only the stages its algorithm needs; PPO from SFT raises
the held-out gold reward and keeps KL to the reference under its limit; RAFT trains on the best samples and
raises gold too; a PPO and a RAFT stage killed (SIGKILL of `dvc repro` and the stage) after a checkpoint resume from
it and write the same policy as the uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from _project import flow_env, init_project, kill_during, read, sh

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
    "raft": {"k": 1, "lr": 0.0005, "epochs": 2, "batch_size": 16, "checkpoint_every": 4},  # killable mid-run
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


def _ppo_iteration_at_least(n: int):
    """A finished PPO checkpoint of iteration >= n (a hidden ".<name>.tmp-*" sibling is one being written)."""
    def ready(root: Path, log: str) -> bool:
        import torch

        states = [p for p in root.glob(".alignloop/ckpt/ps/*/state.pt") if not p.parent.name.startswith(".")]
        try:
            return bool(states) and torch.load(states[0], weights_only=True)["iteration"] >= n
        except (OSError, RuntimeError, EOFError):  # replaced between the glob and the read: look again
            return False
    return ready


@pytest.mark.parametrize("stage,ready,output,resumed,ckpt", [
    ("ppo_ps", _ppo_iteration_at_least(4), "data/rounds/ps/policy", r"ppo ps: resumed from iteration (\d+)",
     ".alignloop/ckpt/ps"),
    ("raft_rf", lambda root, log: any(root.glob(".alignloop/ckpt/raft_rf/*/checkpoint-4/COMPLETE")),
     "data/rounds/rf/policy", r"raft rf: resuming from \S+checkpoint-(\d+)", ".alignloop/ckpt/raft_rf"),
], ids=["ppo", "raft"])
def test_a_stage_killed_under_dvc_repro_resumes_from_its_checkpoint_with_the_same_policy(project, stage, ready, output,
                                                                                         resumed, ckpt):
    """SIGKILL `dvc repro -f -s <stage>` (dvc and the stage) after a finished checkpoint; the rerun resumes from it
    and saves the uninterrupted policy byte for byte; nothing else reruns afterwards."""
    import re

    policy = project / output / "model.safetensors"
    uninterrupted = policy.read_bytes()
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    kill_during(project, stage, ready)
    assert not policy.exists() or policy.read_bytes() == uninterrupted  # never a partial policy
    out = sh(["dvc", "repro", "--force", "--single-item", stage], project)
    m = re.search(resumed, out.stdout + out.stderr)
    assert m, (out.stdout + out.stderr)[-3000:]
    if stage == "ppo_ps":
        assert 4 <= int(m.group(1)) < PARAMS["ppo"]["iterations"]
    assert policy.read_bytes() == uninterrupted  # same seed, same checkpointed state: the same policy
    after = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert [o for o in after[stage]["outs"] if o["path"] == output] == \
        [o for o in lock[stage]["outs"] if o["path"] == output]
    assert not (project / ckpt).exists()  # cleaned up once the policy is saved
    rest = sh(["dvc", "repro"], project).stdout
    assert "Running stage" not in rest, rest
