"""End to end: the whole loop on a tiny configuration in a fresh DVC project, run by the Prefect pipeline flow
(under ``prefect_test_harness``), then checked with plain DVC.

Asserts what a user relies on: the flow runs every stage once in dependency order; the loop improves the
hidden gold reward over SFT; `dvc repro` after the flow does nothing (the flow ran exactly the DVC pipeline)
and neither does a second flow run; a failing stage fails the flow with the stage's own error; a round's DPO
beta change reruns only that round's training and what follows; asking for one more round runs exactly the
new round's stages (their generation and scoring sharded over a three-node Ray cluster on this machine, merged into
the very bytes one process writes, and a node lost mid-shard re-run on another);
`dvc dag/metrics/plots` work; every stage execution is an MLflow run.

The module's tests share one project and run in file order; each leaves it as it found it, except the last
two, which extend it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _project import BIN, REPO, flow_env, init_project, read, sh
from bench.ui_walkthrough import browser_missing

pytestmark = pytest.mark.in_file_order

TINY = {
    "experiment": "e2e",
    "seed": 0,
    "task": {"num_prompts": 160, "sft_per_prompt": 4, "pairs_per_prompt": 6, "annotator_temperature": 0.3},
    "model": {"max_length": 64, "arch": {"hidden_size": 96, "num_layers": 2, "num_heads": 4,
                                         "intermediate_size": 256, "vocab_size": 1024}},
    "sft": {"epochs": 4, "lr": 0.004, "batch_size": 32},
    "reward_model": {"epochs": 5, "lr": 0.001, "batch_size": 32},
    "generate": {"n": 4, "max_new_tokens": 24},
    "dpo": {"beta": 0.3, "lr": 0.0005, "epochs": 2, "batch_size": 16, "ref": "prev"},
    "score": {"batch_size": 8},  # blocks of 8 batches: the round's ~500 samples are 8 blocks, so 2 shards split
    "evaluate": {"max_new_tokens": 24, "samples_per_prompt": 4},
    # A held-out judge (its own split, seed and stage) beside gold, and a gate rule on it.
    "curate": {"judge_fraction": 0.1},
    "judge_model": {"enabled": True, "init": "sft", "epochs": 5},
    # And an LLM judge: a real OpenAI-compatible server on 127.0.0.1 (tests/_judge_server.py) that answers from gold.
    "llm_judge": {"enabled": True, "model": "gold-judge", "api_key_env": None, "max_prompts": 16},
    "registry": {"gate": {"beat_champion": ["proxy_reward"], "lower_bound": {"win_rate_vs_sft_judge": 0.5},
                          "min": {"win_rate_vs_sft_llm": 0.5}}},
    "orchestration": {"retries": 1, "retry_delay_s": 1},
    "rounds": {"r1": {"algo": "dpo", "prev": "sft", "dpo": {}}, "r2": {"algo": "dpo", "prev": "r1", "dpo": {}}},
}
ROUNDS = ["r1", "r2"]
LAST = ROUNDS[-1]


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def llm_server():
    from _judge_server import GoldJudgeServer

    with GoldJudgeServer() as server:
        yield server


@pytest.fixture(scope="module")
def project(tmp_path_factory, harness, llm_server) -> Path:
    from flows.pipeline import pipeline

    params = {**TINY, "llm_judge": {**TINY["llm_judge"], "base_url": llm_server.base_url}}
    root = init_project(tmp_path_factory.mktemp("pipeline"), params)
    # The flow's stage subprocesses inherit this process' environment.
    with flow_env(root):
        results = pipeline(project_dir=str(root))
        (root / "first_flow.json").write_text(json.dumps(results))
        yield root


def dvc_yaml_stages(root: Path) -> list[str]:
    return list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


def test_flow_ran_every_stage_once_in_dvc_yaml_order(project):
    results = read(project, "first_flow.json")
    assert [r["stage"] for r in results] == dvc_yaml_stages(project)
    assert all(r["ran_stages"] == [r["stage"]] for r in results), results
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(dvc_yaml_stages(project))


def test_loop_improves_gold_reward_over_sft(project):
    rows = read(project, "data/report/rounds.json")
    assert [r["policy"] for r in rows] == ["sft", *ROUNDS]
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
    assert rm["loss_last"] < rm["loss_first"]
    assert read(project, "data/models/rm.heldout.json")["eval_accuracy"] > 0.55
    for r in ROUNDS:
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


def test_dvc_repro_after_the_flow_does_nothing(project):
    """The flow kept nothing of its own: plain DVC sees exactly the pipeline it ran."""
    proc = sh(["dvc", "repro"], project)
    assert "Running stage" not in proc.stdout
    status = sh(["dvc", "status"], project)
    assert "up to date" in status.stdout


def test_evaluation_reruns_only_when_its_params_change(project):
    """Evaluation settings are params of the evaluate stages alone: changing one makes exactly those stale."""
    before = (project / "params.yaml").read_text()
    raw = yaml.safe_load(before)
    raw.setdefault("evaluate", {})["bootstrap_resamples"] = 500
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        # The edit reaches the stages' tracked values through the resolve stage (`dvc repro` runs it first).
        assert set(json.loads(sh(["dvc", "status", "--json"], project).stdout)) == {"resolve"}
        sh(["dvc", "repro", "resolve"], project)
        status = json.loads(sh(["dvc", "status", "--json"], project).stdout)
        # (the LLM judge's intervals use the same resamples)
        assert set(status) == {"evaluate_sft", *(f"{s}_{r}" for r in ROUNDS for s in ("evaluate", "llm_judge"))}, status
    finally:
        (project / "params.yaml").write_text(before)
        sh(["dvc", "repro", "resolve"], project)
    assert json.loads(sh(["dvc", "status", "--json"], project).stdout) == {}


def test_second_flow_run_skips_every_stage(project):
    from flows.pipeline import pipeline

    results = pipeline(project_dir=str(project))
    assert [r["stage"] for r in results] == dvc_yaml_stages(project)
    assert not any(r["ran"] for r in results), results


def registered(project: Path) -> list[dict]:
    from alignloop.pipeline import registry

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project}/mlflow.db"
    return registry.versions("e2e-policy")


def test_each_round_is_one_registered_version_even_after_reruns(project):
    """One version per round — after the first flow run, `dvc repro` and a second flow run."""
    rows = registered(project)
    assert [v["round"] for v in rows] == ROUNDS and [v["version"] for v in rows] == ["1", "2"]
    assert "candidate" in rows[-1]["aliases"]
    records = {r: read(project, f"data/rounds/{r}/registry.json") for r in ROUNDS}
    champion = records[LAST]["champion_after"]
    holders = [v["version"] for v in rows if "champion" in v["aliases"]]
    if champion["round"] == "sft":  # no round beat SFT: nothing is champion
        assert holders == []
    else:
        assert holders == [champion["version"]]
    for r, rec in records.items():
        assert rec["version"] == rows[ROUNDS.index(r)]["version"]
        assert rows[ROUNDS.index(r)]["tags"]["policy_md5"] == rec["policy"]["md5"]
        assert ("PROMOTED" in rows[ROUNDS.index(r)]["description"]) == rec["promoted"]


def test_registry_flow_promotes_and_rolls_back(project):
    from alignloop.pipeline import registry
    from flows.registry import registry_flow

    registered(project)  # points MLFLOW_TRACKING_URI at the project's store
    before = [v["version"] for v in registry.versions("e2e-policy") if "champion" in v["aliases"]]
    target = before[0] if before else str(len(ROUNDS))
    if not before:  # the gate promoted nothing: make a champion to roll back to (undone below)
        registry_flow(action="promote", version=target, reason="test setup", project_dir=str(project))
    try:
        out = registry_flow(action="promote", version="1", reason="test", project_dir=str(project))
        assert out["champion"] == "1" and out["versions"] == len(ROUNDS)
        # rollback returns the champion to the one before (the gate's, when it chose one)
        assert registry_flow(action="rollback", project_dir=str(project))["champion"] == target
        assert [v["version"] for v in registry.versions("e2e-policy") if "champion" in v["aliases"]] == [target]
    finally:
        if not before:  # leave the store as the pipeline left it, for the tests that read it after this one
            registry.client().delete_registered_model_alias("e2e-policy", "champion")
    from prefect.artifacts import Artifact

    assert "| 1 | r1 |" in Artifact.get("e2e-policy-registry").data


def test_mlflow_server_on_the_store_shows_runs_and_registered_versions(project, tmp_path):
    """As a user would open it: `mlflow server` (what `mlflow ui` runs) on the project's store, read through
    its REST API (the UI's pages are drawn from these same endpoints; test_the_ui_walkthrough_in_a_browser opens
    the pages themselves where Chromium is installed)."""
    import urllib.parse
    import urllib.request

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(["mlflow", "server", "--backend-store-uri", f"sqlite:///{project}/mlflow.db",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=project,
                              env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
                              stdout=open(tmp_path / "mlflow.log", "w"), stderr=subprocess.STDOUT)

    def get(path: str):
        try:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                body = r.read().decode()
                return json.loads(body) if r.headers.get_content_type() == "application/json" else body
        except OSError:
            return None

    try:
        _wait_for("mlflow server", lambda: get("/health") is not None, 120, [server])
        assert "<html" in get("/").lower()
        model = get("/api/2.0/mlflow/registered-models/get?name=e2e-policy")["registered_model"]
        aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
        assert aliases["candidate"] == str(len(ROUNDS))
        q = urllib.parse.quote("name='e2e-policy'")
        found = get(f"/api/2.0/mlflow/model-versions/search?filter={q}")["model_versions"]
        assert sorted(v["version"] for v in found) == ["1", "2"]
        exp = get("/api/2.0/mlflow/experiments/get-by-name?experiment_name=e2e")["experiment"]
        req = urllib.request.Request(base + "/api/2.0/mlflow/runs/search", method="POST",
                                     data=json.dumps({"experiment_ids": [exp["experiment_id"]], "max_results": 1000}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            runs = json.loads(r.read())["runs"]
        stages = {t["value"] for run in runs for t in run["data"]["tags"] if t["key"] == "dvc_stage"}
        assert {"sft", "dpo_r1", f"register_{LAST}", "report"} <= stages
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_round_artifacts_are_published(project):
    from prefect.artifacts import Artifact

    art = Artifact.get("e2e-r2")
    assert art is not None and "| gold reward (hidden) |" in art.data and "Round `r2`" in art.data
    table = Artifact.get("e2e-rounds")
    assert table is not None and "gold_reward" in str(table.data)
    import json as json_

    rows = json_.loads(table.data) if isinstance(table.data, str) else table.data
    # policy first, then the gate's metrics (TINY's gate: proxy_reward, the judge's lower bound, the LLM's floor)
    assert list(rows[0])[:4] == ["policy", "proxy_reward", "win_rate_vs_sft_judge", "win_rate_vs_sft_llm"], list(rows[0])
    # every round's summary on the pipeline run too, not only on the round subflows' pages
    summary = Artifact.get("e2e-rounds-summary")
    assert summary is not None and all(f"Round `{r}`" in summary.data for r in ROUNDS)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(what: str, check, timeout: float, procs: list) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args[:4]} exited ({proc.returncode}) while waiting for {what}")
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def served(project, tmp_path_factory):
    """A real Prefect server and `python -m flows.serve` on the project, started as the README says."""
    import urllib.request
    from types import SimpleNamespace

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("served")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": f"{base}/api",
           "PREFECT_HOME": str(logs / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db"}

    def get(url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except OSError:
            return 0, ""

    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT)
    serve = None
    try:
        _wait_for("prefect server health", lambda: get(f"{base}/api/health")[0] == 200, 180, [server])
        assert "<html" in get(f"{base}/")[1].lower()  # the UI is served too
        # From the repository root, as the README says: flows/ and tasks/ are not installed packages.
        serve = subprocess.Popen([sys.executable, "-m", "flows.serve", "--project-dir", str(project),
                                  "--stop-timeout", "10"], env=env,
                                 cwd=REPO, stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT)
        inspect = ["prefect", "deployment", "inspect", "alignloop-pipeline/pipeline-on-schedule"]
        _wait_for("the served deployment",
                  lambda: subprocess.run(inspect, env=env, capture_output=True).returncode == 0, 180, [server, serve])
        yield SimpleNamespace(base=base, env=env, logs=logs, server=server, serve=serve)
    finally:
        for proc in (serve, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_served_deployment_runs_on_a_real_prefect_server(project, served):
    """As a new user would: `prefect server start`, `python -m flows.serve`, `prefect deployment run -p ...`."""
    env = served.env
    params_before = (project / "params.yaml").read_text()
    try:
        for name in ("alignloop-round/one-round-on-demand", "alignloop-registry/registry-operations"):
            # names that say what they do
            assert subprocess.run(["prefect", "deployment", "inspect", name], env=env, capture_output=True).returncode == 0
        run = subprocess.run(["prefect", "deployment", "run", "alignloop-pipeline/pipeline-on-schedule",
                              "--params", json.dumps({"overrides": {"orchestration.retry_delay_s": 2.0}}),
                              "--watch", "--watch-timeout", "600"],
                             env=env, capture_output=True, text=True, timeout=700)
        assert run.returncode == 0 and "Completed" in run.stdout, (run.stdout[-3000:], run.stderr[-3000:],
                                                                    (served.logs / "serve.log").read_text()[-5000:])
        # The parameter reached the run, which wrote it where DVC and the next person can see it.
        assert yaml.safe_load((project / "params.yaml").read_text())["orchestration"]["retry_delay_s"] == 2.0
        inspect = subprocess.run(["prefect", "deployment", "inspect", "alignloop-pipeline/pipeline-on-schedule"],
                                 env=env, capture_output=True, text=True).stdout
        assert "0 2 * * *" in inspect
        # The form's fields say what their empty values keep (params.yaml when served: two DPO rounds, TINY's beta).
        import urllib.request

        with urllib.request.urlopen(f"{served.base}/api/deployments/name/alignloop-pipeline/pipeline-on-schedule") as r:
            schema = json.loads(r.read())["parameter_openapi_schema"]
        assert schema["properties"]["rounds"]["description"].endswith("params.yaml now: 2 (r1 dpo, r2 dpo).")
        beta = schema["definitions"]["RoundSettings"]["properties"]["beta"]["description"]
        assert beta.endswith(f"params.yaml now: {TINY['dpo']['beta']}."), beta
    finally:
        (project / "params.yaml").write_text(params_before)


def test_failing_stage_fails_the_flow_with_the_stages_error(project):
    from flows.pipeline import pipeline
    from tasks._proc import StageFailed

    params_before = (project / "params.yaml").read_text()
    try:
        state = pipeline(project_dir=str(project), overrides={"rounds.r1.pairs.min_margin": 1000.0},
                         return_state=True)
        assert state.is_failed()
        with pytest.raises(StageFailed) as err:
            state.result()
        msg = str(err.value)
        assert "stage 'pairs_r1' failed" in msg
        assert "no prompt produced a pair with margin >= 1000" in msg and "fix: lower rounds.r1.pairs.min_margin" in msg
        # The override went into params.yaml: `dvc repro` would fail the same way; nothing hidden in Prefect.
        assert yaml.safe_load((project / "params.yaml").read_text())["rounds"]["r1"]["pairs"] == {"min_margin": 1000.0}
    finally:
        (project / "params.yaml").write_text(params_before)
        sh(["alignloop", "render"], project)
    # DVC's run cache brings the previous pairs back; nothing downstream changes. (The restored params.yaml is a
    # changed dep of the one-second resolve stage, whose output is what it was: nothing after it runs.)
    out = sh(["dvc", "repro"], project).stdout
    assert {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")} <= {"resolve"}, out
    out = sh(["dvc", "repro"], project).stdout
    assert "Running stage" not in out, out


@pytest.mark.browser
@pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "Chromium is here")
def test_the_ui_walkthrough_in_a_browser(project, served, tmp_path):
    """bench/ui_walkthrough.py's walk, in headless Chromium, on this project: the deployments list, the pipeline's
    Custom-run form (typing the number of rounds params.yaml has: nothing reruns), the finished run and its Artifacts
    tab; MLflow's runs list, a DPO run (status, lineage tags, curves), the registered model (aliases) and the FAILED
    run the previous test left, with its error. Screenshots in tmp_path."""
    import urllib.request

    from bench.ui_walkthrough import Walk, mlflow_walk, prefect_walk, wait

    before = {f: (project / f).read_text() for f in ("params.yaml", "dvc.lock")}
    port = _free_port()
    mlflow_url = f"http://127.0.0.1:{port}"
    ui = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", f"sqlite:///{project}/mlflow.db", "--host",
                           "127.0.0.1", "--port", str(port)], env=served.env,
                          stdout=open(tmp_path / "mlflow.log", "w"), stderr=subprocess.STDOUT)
    walk = Walk(tmp_path)
    try:
        run = prefect_walk(walk, served.base, len(ROUNDS), ["e2e-rounds", "e2e-rounds-summary"])
        wait("the MLflow UI", lambda: urllib.request.urlopen(f"{mlflow_url}/health", timeout=2), 120)
        mlflow_walk(walk, mlflow_url, "e2e", "e2e-policy",
                    failed={"run": "pairs_r1", "error": "no prompt produced a pair with margin >= 1000"})
    finally:
        walk.close()
        ui.terminate()
        ui.wait(timeout=30)
    assert walk.missing() == [], (walk.missing(), run["state_type"], (served.logs / "serve.log").read_text()[-3000:])
    assert run["parameters"]["rounds"] == len(ROUNDS)  # the typed value reached the run
    assert {f: (project / f).read_text() for f in before} == before  # and, as many rounds as there were, changed nothing


def test_flows_serve_stops_promptly_when_its_server_is_gone(served):
    """Stopping the server first, then flows.serve: it must still stop, promptly and cleanly (it used to hang on
    SIGTERM, retrying calls to the gone server, until SIGKILLed)."""
    import time

    served.server.terminate()
    served.server.wait(timeout=60)
    t0 = time.time()
    served.serve.terminate()
    assert served.serve.wait(timeout=60) == 0 and time.time() - t0 < 30, (served.logs / "serve.log").read_text()[-3000:]


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
    html = (project / "plots_html" / "index.html").read_text()
    for title in ("Reward by round", "KL to SFT", "Response length", "Diversity", "Proxy gain minus gold gain"):
        assert title in html
    assert "rounds.png" in html  # the report's PNG is a plot too
    png = (project / "data/report/rounds.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    ev = read(project, f"data/rounds/{LAST}/eval.json")
    for key in ("gold_reward_ci", "win_rate_vs_sft_gold_ci", "win_rate_vs_champion_gold_ci"):
        assert ev[key]["low"] <= ev[key.removesuffix("_ci")] <= ev[key]["high"], key
    assert ev["champion"] == read(project, f"data/rounds/{ROUNDS[-2]}/registry.json")["champion_after"]["round"]
    assert {"ranking_accuracy", "ranking_accuracy_vs_sft", "rm_eval_accuracy", "self_bleu", "distinct_1",
            "proxy_gold_gap"} <= set(ev)
    assert ev["settings"]["seed"] == TINY.get("evaluate", {}).get("seed", 1234)


def test_rounds_are_judged_by_the_held_out_judge_and_an_exact_kl(project):
    """The judge trains on its own split only, nothing but evaluation reads it, and the gate decided on it; the KL
    (evaluate.temperature 0.7 here: drawn from separate temperature-1 samples) is exact and never negative."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "data/curated/prefs/judge.jsonl" in stages["judge_model"]["deps"]
    readers = {name for name, st in stages.items() if "data/models/judge" in st.get("deps", [])}
    assert readers == {"evaluate_sft", *(f"evaluate_{r}" for r in ROUNDS)}, readers
    judge_prompts = {json.loads(l)["prompt"] for l in (project / "data/curated/prefs/judge.jsonl").read_text().splitlines()}
    train = {json.loads(l)["prompt"] for f in ("prefs/train.jsonl", "sft.jsonl", "prompts/train.jsonl")
             for l in (project / "data/curated" / f).read_text().splitlines()}
    assert judge_prompts and not judge_prompts & train
    for r in ROUNDS:
        ev = read(project, f"data/rounds/{r}/eval.json")
        for key in ("judge_reward", "win_rate_vs_sft_judge", "win_rate_vs_champion_judge"):
            assert ev[f"{key}_ci"]["low"] <= ev[key] <= ev[f"{key}_ci"]["high"], (r, key)
        assert ev["proxy_judge_gap"] == pytest.approx(ev["win_rate_vs_sft_proxy"] - ev["win_rate_vs_sft_judge"])
        assert ev["kl_to_sft"] > 0 and ev["kl_to_prev"] > 0 and ev["kl_samples"] == ev["samples"]
        assert ev["kl_to_sft_ci"]["low"] >= 0
        reasons = read(project, f"data/rounds/{r}/registry.json")["reasons"]
        assert any(x.split()[1] == "win_rate_vs_sft_judge:" for x in reasons), reasons
    assert read(project, "data/rounds/r1/eval.json")["kl_to_prev"] == read(project, "data/rounds/r1/eval.json")["kl_to_sft"]


def test_rounds_are_judged_by_an_llm_in_both_orders_and_the_gate_reads_it(project, llm_server):
    """The LLM judge (an HTTP server answering from gold) saw every pair in both orders; its win-rates reached the
    gate and the registry tags; the second flow run and `dvc repro` made no further calls (stage skipped, cache)."""
    for r in ROUNDS:
        m = read(project, f"data/rounds/{r}/llm_judge.json")
        pairs = m["llm_pairs_vs_sft"] + (m["llm_pairs_vs_champion"] if m["champion"] != "sft" else 0)
        assert m["llm_pairs_vs_sft"] == 16 and m["llm_judgments"] == 2 * pairs, m
        for key in ("win_rate_vs_sft_llm", "win_rate_vs_champion_llm"):
            assert m[f"{key}_ci"]["low"] <= m[key] <= m[f"{key}_ci"]["high"], (r, key)
            assert 0 < m[f"lc_{key}"] < 1
        reasons = read(project, f"data/rounds/{r}/registry.json")["reasons"]
        assert any(x.split()[1] == "win_rate_vs_sft_llm:" for x in reasons), reasons
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    runs = [r for r in mlflow.search_runs(experiment_names=["e2e"], output_format="list")
            if r.data.tags["dvc_stage"].startswith("llm_judge_")]
    judged = sum(r.data.metrics["llm_calls"] for r in runs)
    assert len(runs) == len(ROUNDS) and llm_server.answered == judged > 0  # each judgment asked once, by the first run
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert f"data/rounds/{LAST}/llm_judge.json" in stages[f"register_{LAST}"]["deps"]


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
    before = (project / "params.yaml").read_text()
    params = yaml.safe_load(before)
    params["rounds"][LAST]["dpo"] = {"beta": 0.5}  # top-level beta is 0.3: a real change
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        sh(["dvc", "repro", "resolve"], project)  # what `dvc repro` runs first
        status = json.loads(sh(["dvc", "status", "--json"], project).stdout)
        assert set(status) == {f"dpo_{LAST}"}, status
        out = sh(["dvc", "repro"], project).stdout
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        assert ran == {f"dpo_{LAST}", f"evaluate_{LAST}", f"llm_judge_{LAST}", f"register_{LAST}", "report"}, out
        # A retrained policy is a new version of the last round, and the candidate.
        rows = registered(project)
        assert [v["round"] for v in rows] == [*ROUNDS, LAST] and "candidate" in rows[-1]["aliases"]
    finally:
        (project / "params.yaml").write_text(before)
    # Back to beta 0.3: DVC's run cache restores the earlier policy; registering it finds its existing version.
    sh(["dvc", "repro"], project)
    rows = registered(project)
    assert len(rows) == len(ROUNDS) + 1
    md5 = read(project, f"data/rounds/{LAST}/registry.json")["policy"]["md5"]
    assert [v["tags"]["policy_md5"] for v in rows if "candidate" in v["aliases"]] == [md5]


NEW = ["r3"]  # what asking for one more round adds
SHARDED = {"orchestration.generate_shards": 2, "orchestration.score_shards": 2}


@pytest.fixture(scope="module")
def ray_cluster(project):
    """A Ray cluster of three nodes on this machine, each its own `ray start` process tree: a head that only
    schedules (no CPUs) and two workers of one CPU each, so two concurrent shard tasks must run on different nodes."""
    from bench.ray_cluster import LocalRayCluster

    with LocalRayCluster({"node_b": 1, "node_c": 1}) as cluster:
        yield cluster


def _shard_rows(cluster, stage: str) -> list[dict]:
    from bench.ray_cluster import shard_placement

    return [r for r in shard_placement(cluster.tasks(), cluster.node_ids()) if r["task"].startswith(f"{stage}-shard-")]


def test_more_rounds_run_exactly_the_new_rounds(project, ray_cluster):
    from flows.pipeline import pipeline

    # The new round's DPO beta from the typed form (a plain dict here, as the Prefect UI sends it); its generation
    # and scoring sharded over the Ray cluster's nodes (--ray --ray-address).
    results = pipeline(project_dir=str(project), rounds=len(ROUNDS) + len(NEW), round_settings={"beta": 0.25},
                       overrides=SHARDED, use_ray=True, ray_address=ray_cluster.address)
    ran = [s for r in results for s in r["ran_stages"]]
    new = [f"{kind}_{r}" for r in NEW
           for kind in ("generate", "score", "pairs", "dpo", "evaluate", "llm_judge", "register")]
    assert ran == ["resolve"] + new + ["report"], ran  # resolve: the flow wrote the new round into params.yaml
    raw = yaml.safe_load((project / "params.yaml").read_text())
    assert list(raw["rounds"]) == [*ROUNDS, *NEW]
    for prev, new in zip([LAST, *NEW], NEW):  # each added round starts from the one before it
        assert raw["rounds"][new]["prev"] == prev
    assert raw["rounds"][NEW[-1]]["dpo"] == {"beta": 0.25}
    assert [r["policy"] for r in read(project, "data/report/rounds.json")] == ["sft", *ROUNDS, *NEW]
    assert "Running stage" not in sh(["dvc", "repro"], project).stdout  # and DVC agrees it is all done
    rounds = [v["round"] for v in registered(project)]
    assert all(rounds.count(r) == 1 for r in NEW) and rounds[-len(NEW):] == NEW
    # Ray's task records: each stage's two shards ran once each, on the two different worker nodes.
    for stage in (f"generate_{NEW[-1]}", f"score_{NEW[-1]}"):
        rows = _shard_rows(ray_cluster, stage)
        assert sorted((r["task"], r["state"]) for r in rows) == [(f"{stage}-shard-{i}-of-2", "FINISHED") for i in (0, 1)], rows
        assert sorted(r["node"] for r in rows) == ["node_b", "node_c"], rows


def _merged_shards(project, stage: str) -> list[float]:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["e2e"], output_format="list", order_by=["attributes.start_time ASC"],
                              filter_string=f"tags.dvc_stage = '{stage}'")
    return [r.data.metrics.get("merged_shards") for r in runs]


def test_sharded_generation_and_scoring_on_ray_equal_one_process(project):
    """The new round's samples and scores were merged from 2 Ray shard tasks each; one process writes the same bytes."""
    for kind, out in (("generate", "samples.jsonl"), ("score", "scores.jsonl")):
        stage = f"{kind}_{NEW[-1]}"
        assert _merged_shards(project, stage) == [2.0], kind
        sharded = (project / f"data/rounds/{NEW[-1]}/{out}").read_bytes()
        sh(["dvc", "repro", "--force", "--single-item", stage], project)
        assert (project / f"data/rounds/{NEW[-1]}/{out}").read_bytes() == sharded, kind
    assert not list((project / ".alignloop/shards").glob(f"*{NEW[-1]}"))  # merged shards are cleaned up
    assert "Running stage" not in sh(["dvc", "repro"], project).stdout


def _shard_processes(pids: list[int], kind: str) -> list[str]:
    import psutil

    out = []
    for pid in pids:
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if f"alignloop.pipeline.stages.{kind}" in cmd and "--shard" in cmd:
            out.append(cmd)
    return out


def test_a_node_lost_mid_shard_is_retried_on_another_node_and_nothing_is_duplicated(project, ray_cluster):
    """node_b is SIGKILLed (all its processes: raylet, workers, the shard's stage process) while it computes a
    generation shard; Ray re-runs that shard task on node_c, the stage merges both shards, and the round's samples
    are the bytes they were. DVC's status is clean after, so nothing downstream moved.

    To make DVC compute generate again (not restore it), the test removes its output, its dvc.lock entry and
    DVC's run cache: to DVC it is a stage that never ran. Its samples come back byte-identical, so score and
    everything after stay up to date."""
    import threading

    import psutil

    from flows.pipeline import pipeline

    r = NEW[-1]
    outs = [project / f"data/rounds/{r}/samples.jsonl", project / f"data/rounds/{r}/scores.jsonl"]
    before = [p.read_bytes() for p in outs]
    outs[0].unlink()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    del lock["stages"][f"generate_{r}"]
    (project / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    shutil.rmtree(project / ".dvc/cache/runs", ignore_errors=True)
    killed: list[str] = []
    done_at_kill: list[int] = []

    def kill_node_b_mid_shard():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            shards = _shard_processes(ray_cluster.tree("node_b"), "generate")
            if shards:
                time.sleep(1.5)  # loading the policy, then sampling: well inside the shard's work
                if _shard_processes(ray_cluster.tree("node_b"), "generate"):
                    killed.append(shards[0])
                    ray_cluster.kill("node_b")
                    done_at_kill.append(len(list(project.glob(f".alignloop/shards/{r}/*/b*.jsonl"))))
                    return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_node_b_mid_shard, daemon=True)
    watcher.start()
    try:
        pipeline(project_dir=str(project), overrides=SHARDED, use_ray=True, ray_address=ray_cluster.address)
    finally:
        killed.append("(flow ended)")
        watcher.join(timeout=10)
    assert killed[0] != "(flow ended)", "node_b was never seen running a generation shard"
    assert done_at_kill[0] < 2  # node_b's shard had not been written when its node went
    assert [p.read_bytes() for p in outs] == before
    # The lost shard was re-run by another node, not computed by the stage: both shards were merged.
    assert _merged_shards(project, f"generate_{r}")[-1] == 2.0
    gen = _shard_rows(ray_cluster, f"generate_{r}")
    lost = killed[0].split("--shard ")[1].split()[0]  # "I/2"
    attempts = [x for x in gen if x["task"] == f"generate_{r}-shard-{lost.replace('/', '-of-')}"]
    assert [x["node"] for x in attempts][-1] == "node_c" and attempts[-1]["state"] == "FINISHED", gen
    assert any(x["node"] == "node_b" and x["state"] == "FAILED" for x in attempts), gen
    # No stray shard process left behind, no shard cache left over, and DVC agrees nothing else changed.
    assert not _shard_processes(psutil.pids(), "generate")
    assert not list((project / ".alignloop/shards").glob(f"*{r}"))
    assert "Running stage" not in sh(["dvc", "repro"], project).stdout
