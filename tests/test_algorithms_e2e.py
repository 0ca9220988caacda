"""The online algorithms (PPO, REINFORCE++, GRPO) and RAFT alongside DPO, end to end on a reduced embedded configuration.

One fresh DVC project whose rounds mix algorithms: the schedule d1 (dpo from SFT) -> g2 (grpo) -> q3 (reinforce_pp,
REINFORCE++-baseline, on a reward mixing the reward model with the two rule-based rewards), plus gs (grpo), qs
(reinforce_pp), ps (ppo) and rf (raft), each from SFT. The Prefect pipeline flow runs it (under
``prefect_test_harness``); `dvc repro` must then have nothing left to do. Asserted: each round ran only the stages
its algorithm needs; GRPO, REINFORCE++ and PPO from SFT each raise the held-out gold reward with KL to SFT under the
limit; a round after another trains from that round's policy; RAFT trains on the best samples and raises gold too;
a PPO and a GRPO stage killed (SIGKILL of `dvc repro` and the stage) after a checkpoint resume from it and write the
same policy as the uninterrupted run (RAFT's resume is the Trainer's, killed in test_crash_resume for sft and dpo).
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
    "raft": {"k": 1, "lr": 0.0005, "epochs": 2, "batch_size": 16},
    "evaluate": {"max_new_tokens": 24, "samples_per_prompt": 4, "temperature": 1.0},  # its samples double as KL samples
    "registry": {"enabled": False},
    "orchestration": {"retries": 0},
    "grpo": {"num_generations": 4, "prompts_per_step": 8, "steps": 16, "max_new_tokens": 24, "lr": 0.0005,
             "beta": 0.05, "checkpoint_every": 4},
    "rounds": {
        "d1": {"algo": "dpo", "prev": "sft"},
        "g2": {"algo": "grpo", "prev": "d1"},
        "q3": {"algo": "reinforce_pp", "prev": "g2",
               "ppo": {"iterations": 6, "rollout_prompts": 12, "samples_per_prompt": 4, "baseline": "group_mean"},
               "reward": {"sources": [
                   {"reward_model": "ensemble", "weight": 1.0},
                   {"function": "alignloop.core.reward_functions:length_window", "weight": 0.5},
                   {"function": "alignloop.core.reward_functions:repetition_penalty", "weight": 0.5}]}},
        "gs": {"algo": "grpo", "prev": "sft"},
        "qs": {"algo": "reinforce_pp", "prev": "sft"},
        "ps": {"algo": "ppo", "prev": "sft"},
        "rf": {"algo": "raft", "prev": "sft"},
    },
}
ONLINE = {"gs": "grpo", "qs": "reinforce_pp", "ps": "ppo"}  # from SFT: each must raise gold within the KL limit


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
    assert {"generate_d1", "score_d1", "pairs_d1", "dpo_d1", "evaluate_d1"} <= set(stages)
    sampling = {"generate", "score", "pairs", "dpo", "raft"}
    for r, algo in {"g2": "grpo", "q3": "reinforce_pp", **ONLINE}.items():
        assert {f"{algo}_{r}", f"evaluate_{r}"} <= set(stages)
        assert not {f"{s}_{r}" for s in sampling | {"ppo", "grpo", "rloo", "reinforce_pp"} - {algo}} & set(stages)
    assert {"generate_rf", "score_rf", "raft_rf"} <= set(stages) and not {"pairs_rf", "dpo_rf"} & set(stages)
    ran = [r["stage"] for r in read(project, "flow.json") if r.get("ran")]
    assert [s for s in ran if s in stages] == [s for s in stages if s in ran]  # dvc.yaml order
    assert {"dpo_d1", "grpo_g2", "reinforce_pp_q3", "grpo_gs", "reinforce_pp_qs", "ppo_ps", "raft_rf"} <= set(ran)


def test_dvc_repro_after_the_mixed_flow_does_nothing(project):
    out = sh(["dvc", "repro"], project).stdout
    assert "Running stage" not in out, out


@pytest.mark.parametrize("r", list(ONLINE))
def test_an_online_round_from_sft_raises_gold_reward_within_the_kl_limit(project, r):
    sft, ev = read(project, "data/eval/sft.json"), read(project, f"data/rounds/{r}/eval.json")
    train = read(project, f"data/rounds/{r}/train_metrics.json")
    first, last = ("reward_first", "reward_last") if ONLINE[r] == "grpo" else ("score_first", "score_last")
    print(f"{ONLINE[r]} from sft: gold {sft['gold_reward']:.3f} -> {ev['gold_reward']:.3f}, KL to SFT "
          f"{ev['kl_to_sft']:.2f}, training reward {train[first]:.3f} -> {train[last]:.3f}")
    assert ev["gold_reward"] > sft["gold_reward"] + 0.1
    assert ev["win_rate_vs_sft_gold"] > 0.5
    assert 0 < ev["kl_to_sft"] < KL_LIMIT
    if ONLINE[r] != "grpo":
        assert 0 < train["kl_to_ref_last"] < KL_LIMIT


def test_each_round_of_the_mixed_schedule_trains_from_the_previous_rounds_policy(project):
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for r, prev, trained_by in (("g2", "d1", "dpo_d1"), ("q3", "g2", "grpo_g2")):
        stage = next(s for s in lock if s.endswith(f"_{r}") and not s.startswith("evaluate"))
        prev_policy = next(o["md5"] for o in lock[trained_by]["outs"] if o["path"] == f"data/rounds/{prev}/policy")
        starts = {d["path"]: d["md5"] for d in lock[stage]["deps"] if d["path"].endswith("/policy")}
        assert starts == {f"data/rounds/{prev}/policy": prev_policy}, (stage, starts)  # prev's policy, no other round's
        before, after = read(project, f"data/rounds/{prev}/eval.json"), read(project, f"data/rounds/{r}/eval.json")
        assert after["kl_to_prev"] > 0 and after["gold_reward"] != before["gold_reward"]  # it trained: the policy moved
    train = read(project, "data/rounds/q3/train_metrics.json")
    assert train["iterations"] == PARAMS["rounds"]["q3"]["ppo"]["iterations"] or train["stopped_early"]


def test_a_mixed_reward_makes_its_functions_part_of_the_rounds_lineage(project):
    """q3's reward mixes the reward model with two rule-based rewards: the module defining them is a code dependency
    of q3's training stage (editing a reward function reruns the rounds that use it), and not of qs, whose reward is
    the reward model alone."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    deps = lambda stage: {d["path"] for d in lock[stage]["deps"]}  # noqa: E731
    assert "alignloop/core/reward_functions.py" in deps("reinforce_pp_q3")
    assert "alignloop/core/reward_functions.py" not in deps("reinforce_pp_qs")
    sources = lock["reinforce_pp_q3"]["params"]["params.resolved.yaml"]["rounds.q3.reward"]["sources"]
    assert [s["function"] for s in sources] == [None, "alignloop.core.reward_functions:length_window",
                                                "alignloop.core.reward_functions:repetition_penalty"]
    train = read(project, "data/rounds/q3/train_metrics.json")
    assert train["iterations"] >= 1


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
    ("grpo_gs", lambda root, log: any(root.glob(".alignloop/ckpt/grpo_gs/*/checkpoint-8/COMPLETE")),
     "data/rounds/gs/policy", r"grpo gs: resuming from \S+checkpoint-(\d+)", ".alignloop/ckpt/grpo_gs"),
], ids=["ppo", "grpo"])
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
