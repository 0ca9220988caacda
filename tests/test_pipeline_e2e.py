"""End to end: `dvc repro` of the whole loop on a tiny configuration, in a fresh DVC project.

Asserts what a user relies on: the loop improves the hidden gold reward over SFT, a second `dvc repro`
does nothing, a round's DPO beta change invalidates only that round's training and what follows it,
`dvc dag/metrics/plots` work, and every stage execution is an MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "experiment": "e2e",
    "seed": 0,
    "task": {"num_prompts": 200, "sft_per_prompt": 4, "pairs_per_prompt": 6, "annotator_temperature": 0.3},
    "model": {"max_length": 64, "arch": {"hidden_size": 96, "num_layers": 2, "num_heads": 4,
                                         "intermediate_size": 256, "vocab_size": 1024}},
    "sft": {"epochs": 4, "lr": 0.004, "batch_size": 32},
    "reward_model": {"epochs": 6, "lr": 0.001, "batch_size": 32},
    "generate": {"n": 4, "max_new_tokens": 24},
    "dpo": {"beta": 0.3, "lr": 0.0005, "epochs": 2, "batch_size": 16, "ref": "prev"},
    "evaluate": {"max_new_tokens": 24, "samples_per_prompt": 4},
    "rounds": {"r1": {"algo": "dpo", "prev": "sft", "dpo": {}}, "r2": {"algo": "dpo", "prev": "r1", "dpo": {}}},
}


def sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", "PYTHONPATH": str(cwd)}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(REPO / "alignloop", root / "alignloop", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    sh(["git", "init", "-q"], root)
    sh(["dvc", "init", "-q"], root)
    sh(["alignloop", "render"], root)
    proc = sh(["dvc", "repro"], root)
    (root / "first_repro.log").write_text(proc.stdout + proc.stderr)
    return root


def read(root: Path, rel: str):
    return json.loads((root / rel).read_text())


def test_loop_improves_gold_reward_over_sft(project):
    rows = read(project, "data/report/rounds.json")
    assert [r["policy"] for r in rows] == ["sft", "r1", "r2"]
    sft, final = rows[0], rows[-1]
    assert final["gold_reward"] > sft["gold_reward"], rows
    assert final["win_rate_vs_sft_gold"] > 0.5, rows
    # The proxy the policy was optimised against rises too, and the policy moved away from SFT.
    assert final["proxy_reward"] > sft["proxy_reward"], rows
    assert final["kl_to_sft"] > 0, rows


def test_training_losses_fall(project):
    sft = read(project, "data/models/sft.metrics.json")
    assert sft["loss_last"] < sft["loss_first"]
    rm = read(project, "data/models/rm.metrics.json")
    assert rm["eval_accuracy"] > 0.55
    for r in ("r1", "r2"):
        m = read(project, f"data/rounds/{r}/train_metrics.json")
        assert m["loss_last"] < m["loss_first"], (r, m)


def test_outputs_follow_contracts(project):
    samples = [json.loads(l) for l in (project / "data/rounds/r1/samples.jsonl").read_text().splitlines()]
    assert {"prompt_id", "sample_idx", "prompt", "response", "num_tokens", "finish_reason", "seed"} <= samples[0].keys()
    train_prompts = (project / "data/curated/prompts/train.jsonl").read_text().splitlines()
    assert len(samples) == 4 * len(train_prompts)
    pairs = [json.loads(l) for l in (project / "data/rounds/r1/pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen_score"] - p["rejected_score"] >= 0.1 for p in pairs)
    weights = list((project / "data/rounds/r2/policy").glob("*.safetensors"))
    assert weights and not list((project / "data/rounds/r2/policy").glob("*.bin"))


def test_second_repro_does_nothing(project):
    proc = sh(["dvc", "repro"], project)
    assert "Running stage" not in proc.stdout
    status = sh(["dvc", "status"], project)
    assert "up to date" in status.stdout


def test_dvc_dag_metrics_plots(project):
    dag = sh(["dvc", "dag", "--md"], project).stdout
    # mermaid: node ids with labels, then edges between ids
    labels = dict(re.findall(r'(node\d+)\["([^"]+)"\]', dag))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", dag)}
    for edge in [("curate", "base"), ("base", "sft"), ("sft", "reward_model"), ("dpo_r1", "generate_r2")]:
        assert edge in edges, dag
    metrics = sh(["dvc", "metrics", "show", "--json"], project).stdout
    assert "gold_reward" in metrics
    sh(["dvc", "plots", "show", "-o", "plots_html"], project)
    assert (project / "plots_html" / "index.html").exists()


def test_mlflow_run_per_stage(project):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["e2e"], output_format="list")
    stages = {r.data.tags["dvc_stage"] for r in runs}
    assert {"prepare", "curate", "base", "sft", "reward_model", "evaluate_sft", "generate_r1", "dpo_r2",
            "evaluate_r2", "report"} <= stages
    dpo = next(r for r in runs if r.data.tags["dvc_stage"] == "dpo_r2")
    assert dpo.data.tags["round"] == "r2" and dpo.data.tags["stage"] == "dpo" and "git_commit" in dpo.data.tags
    assert "train_runtime_s" in dpo.data.metrics


def test_changing_one_rounds_beta_reruns_only_that_round_onward(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["rounds"]["r2"]["dpo"] = {"beta": 0.5}  # top-level beta is 0.3: a real change
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(sh(["dvc", "status", "--json"], project).stdout)
        assert set(status) == {"dpo_r2"}, status
        out = sh(["dvc", "repro"], project).stdout
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        assert ran == {"dpo_r2", "evaluate_r2", "report"}, out
    finally:
        (project / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
