"""The model registry against a real sqlite-backed MLflow store: the register stage over three rounds, the gate,
idempotent reruns, promote/rollback, resolving models:/ URIs, and two processes registering at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.in_file_order  # one scenario over one shared project (see the module docstring)

from alignloop.pipeline import registry, tracking
from alignloop.pipeline.registry import RegistryError

PARAMS = {
    "experiment": "reg",
    "registry": {"gate": {"beat_champion": ["gold_reward"], "max": {"kl_to_sft": 5.0}}},
    "rounds": {"r1": {"algo": "dpo", "prev": "sft"}, "r2": {"algo": "dpo", "prev": "r1"},
               "r3": {"algo": "dpo", "prev": "r2"}, "r4": {"algo": "dpo", "prev": "r3", "start": "champion"}},
}
EVALS = {  # gold rises in r1 and r2; r3 is worse than r2 (fails the gate); r4's KL breaks the cap
    "sft": {"gold_reward": 0.1, "proxy_reward": 1.0, "kl_to_sft": 0.0},
    "r1": {"gold_reward": 0.4, "proxy_reward": 2.0, "kl_to_sft": 1.0},
    "r2": {"gold_reward": 0.7, "proxy_reward": 3.0, "kl_to_sft": 2.0},
    "r3": {"gold_reward": 0.6, "proxy_reward": 3.5, "kl_to_sft": 3.0},
    "r4": {"gold_reward": 0.9, "proxy_reward": 4.0, "kl_to_sft": 7.0},
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("ALIGNLOOP_ARTIFACT_ROOT", str(tmp_path / "mlartifacts"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    for name, ev in EVALS.items():
        eval_json = Path("data/eval/sft.json") if name == "sft" else Path(f"data/rounds/{name}/eval.json")
        eval_json.parent.mkdir(parents=True, exist_ok=True)
        eval_json.write_text(json.dumps(ev))
        policy = Path("data/models/sft") if name == "sft" else Path(f"data/rounds/{name}/policy")
        policy.mkdir(parents=True, exist_ok=True)
        (policy / "model.safetensors").write_bytes(f"weights of {name}".encode())
    return tmp_path


def register(round_name: str) -> dict:
    """Run the register stage; its record, plus `created`: whether this run created the version (the stage prints it;
    the record leaves it out so that a rerun writes the same record)."""
    import contextlib
    import io

    from alignloop.pipeline.stages.register import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--round", round_name]) == 0
    rec = json.loads(Path(f"data/rounds/{round_name}/registry.json").read_text())
    assert "created" not in rec and "source" not in rec
    return {**rec, "created": f"version {rec['version']} (new)" in out.getvalue()}


def test_rounds_register_versions_with_tags_aliases_and_gate(project):
    r1, r2, r3 = register("r1"), register("r2"), register("r3")
    assert [r1["version"], r2["version"], r3["version"]] == ["1", "2", "3"]
    assert r1["promoted"] and r2["promoted"] and not r3["promoted"]
    assert r3["reasons"][0] == "FAIL gold_reward: 0.6000 <= champion 0.7000"
    assert r3["champion_after"]["round"] == "r2" and r3["champion_after"]["version"] == "2"

    rows = {r["version"]: r for r in registry.versions("reg-policy")}
    assert set(rows) == {"1", "2", "3"}
    assert rows["3"]["aliases"] == ["candidate"] and rows["2"]["aliases"] == ["champion"]
    t = rows["2"]["tags"]
    assert t["round"] == "r2" and t["algo"] == "dpo" and t["parent_version"] == "1" and t["prev"] == "r1"
    assert t["metric.gold_reward"] == "0.7" and "git_commit" in t
    # the policy's identity is its DVC md5, as dvc.lock records the policy directory
    assert t["policy_md5"] == tracking.dvc_md5(project / "data/rounds/r2/policy") and t["policy_md5"].endswith(".dir")
    assert "dvc_lock_md5" in t and "dvc.params_md5" in t
    assert rows["1"]["tags"]["parent_version"] == "sft"
    # The decision and its reasons are the version's description.
    assert "stays candidate" in rows["3"]["description"] and "FAIL gold_reward" in rows["3"]["description"]
    assert "PROMOTED" in rows["2"]["description"]
    # No weights uploaded by default: the source is the policy directory itself.
    assert rows["1"]["source"] == str(project / "data/rounds/r1/policy")


def test_rerunning_a_round_returns_the_existing_version(project):
    register("r1")
    again = register("r1")
    assert again["version"] == "1" and again["created"] is False
    assert [r["version"] for r in registry.versions("reg-policy")] == ["1"]
    assert [h["version"] for h in registry.history("reg-policy")] == ["1"]  # promoted once, not twice


def test_replaying_an_earlier_round_does_not_move_the_champion_back(project):
    register("r1"), register("r2")
    again = register("r1")  # e.g. `dvc repro --force`: r1 is replayed after r2 was promoted
    assert again["created"] is False
    rows = {r["version"]: r for r in registry.versions("reg-policy")}
    assert rows["2"]["aliases"] == ["champion"]
    assert [h["version"] for h in registry.history("reg-policy")] == ["1", "2"]


def test_a_crash_between_version_and_alias_is_completed_by_the_rerun(project):
    from alignloop.pipeline import registry as reg

    c = reg.client()
    c.create_registered_model("reg-policy")
    md5 = reg.content_hash(project / "data/rounds/r1/policy")
    c.create_model_version("reg-policy", source=str(project / "data/rounds/r1/policy"), tags={"round": "r1", "policy_md5": md5})
    rec = register("r1")  # the version exists (created before the "crash"), the aliases do not
    assert rec["version"] == "1" and rec["created"] is False
    assert registry.versions("reg-policy")[0]["aliases"] == ["candidate", "champion"]


def test_changed_weights_are_a_new_version(project):
    register("r1")
    (project / "data/rounds/r1/policy/model.safetensors").write_bytes(b"retrained")
    assert register("r1")["version"] == "2"


def test_start_champion_skips_a_rejected_round(project):
    from alignloop.core.config import load_params
    from alignloop.pipeline.lineage import start_policy

    for r in ("r1", "r2", "r3"):
        register(r)
    params = load_params("params.yaml")
    assert start_policy(params, "r4") == "data/rounds/r2/policy"   # r3 was rejected
    assert start_policy(params, "r3") == "data/rounds/r2/policy"   # start: prev
    r4 = register("r4")  # gold beats r2, but KL 7 > cap 5
    assert not r4["promoted"] and "FAIL kl_to_sft: 7.0000 > cap 5.0" in r4["reasons"]


def test_rollback_moves_champion_back_and_is_recorded(project):
    for r in ("r1", "r2", "r3"):
        register(r)
    assert registry.rollback("reg-policy", reason="r2 misbehaves in production") == {"champion": "1", "from": "2"}
    rows = {r["version"]: r for r in registry.versions("reg-policy")}
    assert rows["1"]["aliases"] == ["champion"] and rows["3"]["aliases"] == ["candidate"]
    assert "rolled back" in rows["2"]["description"]
    hist = registry.history("reg-policy")
    assert [(h["version"], h["by"]) for h in hist] == [("1", "gate"), ("2", "gate"), ("1", "rollback")]
    assert hist[-1]["reason"] == "r2 misbehaves in production"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("reg-policy")
    registry.promote("reg-policy", "3", reason="hand pick")
    assert registry.rollback("reg-policy")["champion"] == "1"


def test_models_uri_resolves_to_a_usable_local_path_and_checks_content(project):
    register("r1")
    path = registry.resolve("models:/reg-policy@champion")
    assert (Path(path) / "model.safetensors").read_bytes() == b"weights of r1"
    assert registry.resolve("models:/reg-policy/1") == path
    (project / "data/rounds/r1/policy/model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="content changed since it was registered"):
        registry.resolve("models:/reg-policy@champion")
    with pytest.raises(RegistryError, match="not a model URI"):
        registry.resolve("runs:/abc/model")


def test_a_version_registered_with_the_old_hash_is_still_checked(project):
    """Versions registered before the policy hash became DVC's carry a 32-digit md5 over names and bytes."""
    import hashlib

    policy = project / "data/rounds/r1/policy"
    h = hashlib.md5()
    for f in sorted(p for p in policy.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(policy)).encode())
        h.update(f.read_bytes())
    c = registry.client()
    c.create_registered_model("reg-policy")
    c.create_model_version("reg-policy", source=str(policy), tags={"round": "r1", "policy_md5": h.hexdigest()})
    assert registry.resolve("models:/reg-policy/1") == str(policy)
    (policy / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="content changed since it was registered"):
        registry.resolve("models:/reg-policy/1")


def test_log_weights_uploads_them_as_artifacts(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["registry"]["log_weights"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    rec = register("r1")
    source = registry.client().get_model_version("reg-policy", rec["version"]).source
    assert source.endswith("/policy") and "mlartifacts" in source
    path = registry.resolve("models:/reg-policy@champion")
    assert (Path(path) / "model.safetensors").read_bytes() == b"weights of r1"
    assert not path.startswith(str(project / "data"))


REGISTER_MANY = """
import json, sys
from alignloop.pipeline import registry as reg
model, rounds = sys.argv[1], sys.argv[2].split(",")
print(json.dumps([reg.register_round(name=model, round_name=r, source=f"/nowhere/{model}/{r}", policy_md5=f"md5-{r}",
                                     run_id=None, tags={}, promote=True, decision="d") for r in rounds]))
"""


def test_two_processes_registering_at_once_lose_and_duplicate_nothing(tmp_path, monkeypatch):
    """Four independent Python processes (as four pipelines' register stages would be) write one sqlite store."""
    import os
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/shared.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    registry.client().search_registered_models()  # create the schema once, as the first stage run would
    rounds = [f"r{i}" for i in range(1, 7)]
    models = ["a-policy", "b-policy", "shared-policy", "shared-policy"]  # the last two race on the same rounds
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([sys.executable, "-c", REGISTER_MANY, m, ",".join(rounds)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for m in models]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for model in ("a-policy", "b-policy", "shared-policy"):
        rows = registry.versions(model)
        assert [r["version"] for r in rows] == [str(i) for i in range(1, 7)], (model, rows)
        assert [r["round"] for r in rows] == rounds
    # Of the two racers on the same rounds, exactly one created each version.
    created = [sum(res[i]["created"] for res in results[2:]) for i in range(6)]
    assert created == [1] * 6


def test_cli_lists_promotes_and_rolls_back(project, capsys):
    from alignloop.cli import main

    for r in ("r1", "r2", "r3"):
        register(r)
    capsys.readouterr()
    assert main(["registry", "list"]) == 0
    out = capsys.readouterr().out
    assert "reg-policy: 3 version(s)" in out
    assert "champion history: v1 (gate) -> v2 (gate)" in out
    line3 = next(l for l in out.splitlines() if l.strip().startswith("3 "))
    assert "candidate" in line3 and "stays candidate" in line3
    assert main(["registry", "promote", "3", "--reason", "A/B test winner"]) == 0
    assert main(["registry", "rollback"]) == 0
    assert "'champion': '2'" in capsys.readouterr().out
    assert main(["registry", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(project / "data/rounds/r2/policy")
    assert main(["registry", "promote", "99"]) == 2
    assert "error:" in capsys.readouterr().err
