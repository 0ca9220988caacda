"""General-preference rounds end to end: the preference model and the sppo, dno, inpo and lipo rounds mixed with a dpo
round in one schedule, on the intransitive embedded task, run by the Prefect pipeline flow with the registry on.

Schedule: s1 (sppo from SFT) -> d2 (dpo) -> n3 (dno) -> i4 (inpo) -> l5 (lipo). Asserted: each round ran only its
algorithm's stages and `dvc repro` afterwards has nothing to do; every round is one registered MLflow model version
with its gate decision; the preference model is better than chance on held-out pairs and against the true (cyclic)
preference, and what it hands on is symmetric (each prompt's win-rates sum to n/2); each self-play round trained on
the pair its win-rates picked, from the previous round's policy, and its loss fell; evaluation's gold win-rate is
the mean of P_gold (not a count of gold-reward wins); a SIGKILLed sppo stage resumes from its checkpoint and saves
the uninterrupted policy byte for byte.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from _project import flow_env, init_project, kill_during, read, sh

pytestmark = pytest.mark.in_file_order  # one scenario over one shared project

TRAIN = {"lr": 0.0005, "epochs": 2, "batch_size": 8, "checkpoint_every": 4}
PARAMS = {
    "experiment": "genpref",
    "seed": 0,
    "task": {"num_prompts": 120, "sft_per_prompt": 4, "pairs_per_prompt": 6, "annotator_temperature": 0.3,
             "intransitive": 3.0},
    "model": {"max_length": 64, "arch": {"hidden_size": 96, "num_layers": 2, "num_heads": 4,
                                         "intermediate_size": 256, "vocab_size": 1024}},
    "sft": {"epochs": 4, "lr": 0.004, "batch_size": 32},
    "reward_model": {"epochs": 5, "lr": 0.001, "batch_size": 32},
    "preference_model": {"enabled": True, "epochs": 4},
    "curate": {"judge_fraction": 0.0}, "judge_model": {"enabled": False},
    "generate": {"n": 4, "max_new_tokens": 24},
    "dpo": {"beta": 0.3, "ref": "prev", **TRAIN},
    "sppo": TRAIN, "dno": TRAIN, "inpo": TRAIN, "lipo": TRAIN,
    "evaluate": {"max_new_tokens": 24, "samples_per_prompt": 4, "temperature": 1.0},
    "registry": {"enabled": True},  # the default gate: beat the champion's gold and proxy reward, KL cap, floor
    "orchestration": {"retries": 0},
    "rounds": {
        "s1": {"algo": "sppo", "prev": "sft"},
        "d2": {"algo": "dpo", "prev": "s1"},
        "n3": {"algo": "dno", "prev": "d2"},
        "i4": {"algo": "inpo", "prev": "n3"},
        "l5": {"algo": "lipo", "prev": "i4"},
    },
}
ALGO = {r: v["algo"] for r, v in PARAMS["rounds"].items()}
SELF_PLAY = [r for r, a in ALGO.items() if a in ("sppo", "dno", "inpo")]


def rows(root: Path, rel: str) -> list[dict]:
    return [json.loads(x) for x in (root / rel).read_text().splitlines()]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    root = init_project(tmp_path_factory.mktemp("genpref"), PARAMS)
    with flow_env(root), prefect_test_harness(server_startup_timeout=120):
        (root / "flow.json").write_text(json.dumps(pipeline(project_dir=str(root))))
        yield root


def test_each_round_runs_its_algorithms_stages_and_dvc_repro_then_does_nothing(project):
    stages = list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    assert "preference_model" in stages
    for r in SELF_PLAY:  # sampled, ranked by the preference model inside training: no score or pairs stage
        assert {f"generate_{r}", f"{ALGO[r]}_{r}", f"evaluate_{r}", f"register_{r}"} <= set(stages)
        assert not {f"score_{r}", f"pairs_{r}"} & set(stages)
    assert {"generate_l5", "score_l5", "pairs_l5", "lipo_l5"} <= set(stages)  # lipo ranks by the round's reward
    ran = {r["stage"] for r in read(project, "flow.json") if r.get("ran")}
    assert {f"{a}_{r}" for r, a in ALGO.items()} | {"preference_model"} <= ran
    out = sh(["dvc", "repro"], project).stdout
    assert "Running stage" not in out, out


def test_every_round_is_a_registered_version_with_its_gate_decision(project):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    versions = mlflow.MlflowClient().search_model_versions("name='genpref-policy'")
    by_round = {}
    for v in versions:
        by_round.setdefault(v.tags.get("round"), []).append(v.version)
    assert sorted(by_round) == sorted(ALGO), by_round
    assert all(len(vs) == 1 for vs in by_round.values())
    for r in ALGO:
        record = read(project, f"data/rounds/{r}/registry.json")
        assert record["round"] == r and isinstance(record["promoted"], bool) and record["reasons"]


def test_the_preference_model_beats_chance_and_hands_on_symmetric_win_rates(project):
    held = read(project, "data/models/pm.heldout.json")
    print("preference model held-out:", held)
    assert held["eval_accuracy"] > 0.55 and held["eval_gold_accuracy"] > 0.55
    assert 0 <= held["symmetry_error"] < 0.5  # raw orders: not forced, only trained towards symmetry
    for r in SELF_PLAY:
        for row in rows(project, f"data/rounds/{r}/winrates.jsonl"):
            wins = [x["win_rate"] for x in row["responses"]]
            # symmetrised: P(i>j) + P(j>i) = 1 for every pair, so a group's win-rates sum to n/2 exactly
            assert sum(wins) == pytest.approx(len(wins) / 2, abs=1e-9)


def test_a_self_play_round_trains_on_its_win_rate_pair_from_the_previous_policy(project):
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for r in SELF_PLAY:
        picked = [x for x in rows(project, f"data/rounds/{r}/winrates.jsonl") if x["chosen"] is not None]
        assert picked
        for row in picked:
            win = {x["sample_idx"]: x["win_rate"] for x in row["responses"] if x["response"].strip()}  # usable ones
            assert win[row["chosen"]] == max(win.values()) and win[row["rejected"]] == min(win.values())
        train = read(project, f"data/rounds/{r}/train_metrics.json")
        print(f"{ALGO[r]} {r}:", {k: train[k] for k in ("pairs", "loss_first", "loss_last", "chosen_win_rate_mean",
                                                       "rejected_win_rate_mean")})
        assert train["pairs"] == len(picked)
        assert train["chosen_win_rate_mean"] > train["rejected_win_rate_mean"]
        assert train["loss_last"] < train["loss_first"]
        prev = PARAMS["rounds"][r]["prev"]
        starts = {d["path"] for d in lock[f"{ALGO[r]}_{r}"]["deps"] if d["path"] in ("data/models/sft",)
                  or d["path"].endswith("/policy")}
        start = "data/models/sft" if prev == "sft" else f"data/rounds/{prev}/policy"
        assert starts == {start} | ({"data/models/sft"} if ALGO[r] == "inpo" else set())  # prev's (+ INPO's SFT ref)
        ev = read(project, f"data/rounds/{r}/eval.json")
        assert ev["kl_to_prev"] > 0  # it trained: the policy moved
    lipo = read(project, "data/rounds/l5/train_metrics.json")
    assert lipo["groups"] > 0 and lipo["loss_last"] < lipo["loss_first"]


def test_gold_win_rate_on_the_intransitive_task_is_the_mean_true_preference(project):
    from alignloop.core.synthetic import gold_preference

    t = PARAMS["task"]
    sft = {(x["prompt_id"], x["sample_idx"]): x for x in rows(project, "data/eval/sft_samples.jsonl")}
    mine = rows(project, "data/rounds/s1/eval_samples.jsonl")
    expected = sum(gold_preference(x["prompt"], x["response"], sft[(x["prompt_id"], x["sample_idx"])]["response"],
                                   t["annotator_temperature"], t["intransitive"]) for x in mine) / len(mine)
    ev = read(project, "data/rounds/s1/eval.json")
    assert ev["win_rate_vs_sft_gold"] == pytest.approx(expected, abs=1e-12)
    assert set(ev["style_shares"]) == {"rock", "paper", "scissors", "none"}


def test_a_killed_sppo_stage_resumes_from_its_checkpoint_with_the_same_policy(project):
    stage, output = "sppo_s1", "data/rounds/s1/policy"
    policy = project / output / "model.safetensors"
    uninterrupted = policy.read_bytes()
    kill_during(project, stage, lambda root, log: any(root.glob(f".alignloop/ckpt/{stage}/*/checkpoint-8/COMPLETE")))
    assert not policy.exists() or policy.read_bytes() == uninterrupted  # never a partial policy
    out = sh(["dvc", "repro", "--force", "--single-item", stage], project)
    assert re.search(r"sppo s1: resuming from \S+checkpoint-(\d+)", out.stdout + out.stderr), out.stdout[-3000:]
    assert policy.read_bytes() == uninterrupted
    assert not (project / ".alignloop/ckpt" / stage).exists()
    rest = sh(["dvc", "repro"], project).stdout
    assert "Running stage" not in rest, rest
