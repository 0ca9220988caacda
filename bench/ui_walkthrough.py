"""Walk through the Prefect and MLflow UIs as a new user would, in headless Chromium, and save screenshots.

Starts a Prefect server, `python -m flows.serve` and `mlflow ui` on a finished project (after `make demo`); on the
Prefect UI opens the deployments list, fills the pipeline deployment's Custom-run form (types the number of rounds
params.yaml already has, so nothing reruns), submits it, waits for the run, opens its page and its Artifacts tab;
on the MLflow UI opens the runs list (model-training view), one training run's page (status, lineage tags) and the
registered policy (versions, aliases). Prints what each page showed; exits non-zero if an expected text is missing.

    apt-get install chromium chromium-driver        # selenium comes with the test extra (make setup)
    python bench/ui_walkthrough.py --project-dir .  # screenshots in bench/out/ui_*.png

The same walk is a test: tests/test_pipeline_e2e.py::test_the_ui_walkthrough_in_a_browser (marker `browser`,
skipped with its reason where Chromium is missing). The screenshots under docs/ are this script's, on the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# MLflow 3.17 opens experiments, runs and models in its GenAI view whatever the experiment's tags; this query selects
# the model-training view (as the "Model training" toggle at the top left does).
ML_VIEW = "workflowType=machine_learning"


def browser_missing() -> str:
    """Why the walk cannot run here ('' when it can)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        return f"{' and '.join(missing)} not found (fix: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (fix: make setup, which installs the test extra)"
    return ""


def chrome():
    """Headless Chromium with the system's driver (selenium's own manager would try to download one)."""
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.binary_location = CHROMIUM
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


def api(url: str, body: dict | None = None):
    req = urllib.request.Request(url, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait(what: str, check, timeout: float = 180, interval: float = 1.0):
    """``check()``'s first truthy value, polled until ``timeout`` (connection errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Walk:
    """One browser, the pages it opened and which expected texts each showed (``seen``), screenshots in ``out``."""

    def __init__(self, out: Path, prefix: str = "ui_"):
        self.out, self.prefix = Path(out), prefix
        self.out.mkdir(parents=True, exist_ok=True)
        self.driver = chrome()
        self.seen: dict[str, dict[str, bool]] = {}

    def body(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def look(self, name: str, needles: list[str], timeout: float = 45) -> str:
        """Wait until the page shows every needle (or ``timeout``), record which it showed, save a screenshot."""
        try:
            wait(f"{name} to show {needles}", lambda: all(n in self.body() for n in needles), timeout, 0.5)
        except TimeoutError:
            pass  # recorded as not seen below
        time.sleep(1)  # let what is still drawing (tables, charts) settle for the screenshot
        body = self.body()
        self.driver.save_screenshot(str(self.out / f"{self.prefix}{name}.png"))
        self.seen[name] = {n: n in body for n in needles}
        print(f"{name}: {self.driver.current_url}\n  " + ", ".join(
            f"{n!r} {'seen' if ok else 'NOT seen'}" for n, ok in self.seen[name].items()), flush=True)
        return body

    def page(self, name: str, url: str, needles: list[str], timeout: float = 45) -> str:
        self.driver.get(url)
        return self.look(name, needles, timeout)

    def click_text(self, text: str) -> None:
        """Click the innermost element whose whole text is ``text`` (a tab, a link), as a user would."""
        clicked = self.driver.execute_script(
            "const t = arguments[0]; const els = [...document.querySelectorAll('*')].filter(e => e.innerText && "
            "e.innerText.trim() === t && ![...e.children].some(c => c.innerText && c.innerText.trim() === t));"
            "if (!els.length) return false; els[els.length - 1].click(); return true;", text)
        if not clicked:
            raise AssertionError(f"nothing to click with the text {text!r} on {self.driver.current_url}")

    def missing(self) -> list[str]:
        return [f"{page}: {n!r}" for page, needles in self.seen.items() for n, ok in needles.items() if not ok]

    def close(self) -> None:
        self.driver.quit()


def submit_form(walk: Walk, prefect: str, deployment: dict, fields: dict[str, str], timeout: float = 900) -> dict:
    """Fill the deployment's Custom-run form (``fields``: parameter label -> text to type), submit it, wait for the
    flow run to end; returns the run (Prefect's API object). Checks the run got the typed values."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    walk.page("run_form", f"{prefect}/deployments/deployment/{deployment['id']}/run",
              ["Run Name", "round_settings", "Beta (Optional)", "KL strength", "params.yaml now:", "Submit"])
    run_name = walk.driver.find_element(
        By.XPATH, "//label[normalize-space()='Run Name']/following::input[1]").get_attribute("value")
    for label, text in fields.items():
        box = walk.driver.find_element(By.XPATH, f"//label[normalize-space()='{label} (Optional)']/following::input[1]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(text)
    walk.driver.save_screenshot(str(walk.out / f"{walk.prefix}run_form_filled.png"))
    [b for b in walk.driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Submit"][-1].click()

    def ended():
        runs = api(f"{prefect}/api/flow_runs/filter", {"flow_runs": {"name": {"any_": [run_name]}}})
        return runs[0] if runs and runs[0]["state_type"] in TERMINAL else None

    run = wait(f"flow run {run_name} to end", ended, timeout, 2)
    print(f"flow run {run_name}: {run['state_type']}, parameters {run['parameters']}", flush=True)
    walk.seen["flow_run_state"] = {"COMPLETED": run["state_type"] == "COMPLETED"}
    walk.seen["flow_run_parameters"] = {f"{k}={v}": str(run["parameters"].get(k)) == v for k, v in fields.items()}
    return run


def prefect_walk(walk: Walk, prefect: str, rounds: int, artifact_keys: list[str], prefix: str = "") -> dict:
    """The Prefect half: deployments list, the form (typing ``rounds``), the finished run and its artifacts."""
    names = [f"{prefix}-{n}" if prefix else n for n in ("pipeline-on-schedule", "one-round-on-demand",
                                                       "registry-operations")]
    walk.page("deployments", f"{prefect}/deployments", names)
    deps = api(f"{prefect}/api/deployments/filter", {})
    deployment = next(d for d in deps if d["name"] == names[0])
    run = submit_form(walk, prefect, deployment, {"rounds": str(rounds)})
    # (the run graph is drawn on a canvas: its node names are not page text; the screenshot shows them)
    walk.page("flow_run", f"{prefect}/runs/flow-run/{run['id']}", ["Completed", names[0], "Artifacts"])
    walk.click_text("Artifacts")
    walk.look("artifacts", artifact_keys)
    # one flow run at a time per deployment: Prefect keeps that as a global concurrency limit (a GPU machine also
    # shows gpu-<hostname> there once a run has sized it)
    walk.page("concurrency", f"{prefect}/concurrency-limits", ["Global Concurrency Limits", f"deployment:{deployment['id']}"])
    return run


def mlflow_walk(walk: Walk, mlflow: str, experiment: str, model: str, failed: dict | None = None) -> None:
    """The MLflow half: runs list (model-training view), a DPO run's page, the registered model, and, given
    ``failed`` = {"run": stage name, "error": text}, that stage's FAILED run page with its error."""
    exp = api(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?"
              + urllib.parse.urlencode({"experiment_name": experiment}))["experiment"]["experiment_id"]
    runs = api(f"{mlflow}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp], "max_results": 1000})["runs"]
    walk.page("mlflow_runs", f"{mlflow}/#/experiments/{exp}/runs?{ML_VIEW}",
              ["Model training", "Run Name", "Duration", "sft", "reward_model", "dpo_r1", "register_r1"])
    dpo = next(r["info"] for r in runs if r["info"]["run_name"] == "dpo_r1" and r["info"]["status"] == "FINISHED")
    walk.page("mlflow_run", f"{mlflow}/#/experiments/{exp}/runs/{dpo['run_id']}?{ML_VIEW}",
              ["dpo_r1", "Status", "Finished", "dvc_dep.data/rounds/r1/pairs.jsonl", "train.loss"])
    walk.page("mlflow_model", f"{mlflow}/#/models/{model}?{ML_VIEW}", [model, "Version 1", "@ candidate", "@ champion"])
    if failed:
        bad = next(r["info"] for r in runs if r["info"]["run_name"] == failed["run"] and r["info"]["status"] == "FAILED")
        walk.page("mlflow_failed_run", f"{mlflow}/#/experiments/{exp}/runs/{bad['run_id']}?{ML_VIEW}",
                  [failed["run"], "Failed", failed["error"]])


def start(cmd: list[str], log: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project-dir", default=".")
    ap.add_argument("--out", default=str(OUT), help="where the screenshots go (default: bench/out)")
    ap.add_argument("--docs", action="store_true", help="also copy the screenshots the README shows into docs/")
    a = ap.parse_args()
    if why := browser_missing():
        raise SystemExit(why)
    import yaml

    project = Path(a.project_dir).resolve()
    params = yaml.safe_load((project / "params.yaml").read_text())
    experiment = params.get("experiment", "alignloop")
    model = (params.get("registry") or {}).get("model_name") or f"{experiment}-policy"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    port, mport = free_port(), free_port()
    prefect, mlflow = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{mport}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": f"{prefect}/api",
           "PREFECT_HOME": tempfile.mkdtemp(prefix="prefect-home-"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db"}
    procs = [start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   out / "ui_prefect.log", env)]
    try:
        wait("the Prefect server", lambda: api(f"{prefect}/api/health"))
        procs.append(start([sys.executable, "-m", "flows.serve", "--project-dir", str(project), "--paused"],
                           out / "ui_serve.log", env, cwd=REPO))
        wait("the served deployments", lambda: len(api(f"{prefect}/api/deployments/filter", {})) >= 3)
        procs.append(start([str(BIN / "mlflow"), "ui", "--backend-store-uri", env["MLFLOW_TRACKING_URI"], "--host",
                            "127.0.0.1", "--port", str(mport)], out / "ui_mlflow.log", env))
        walk = Walk(out)
        try:
            prefect_walk(walk, prefect, len(params.get("rounds") or {}),
                         [f"{experiment}-rounds", f"{experiment}-rounds-summary"])
            wait("the MLflow UI", lambda: urllib.request.urlopen(f"{mlflow}/health", timeout=2))
            mlflow_walk(walk, mlflow, experiment, model)
        finally:
            walk.close()
    finally:
        stop(procs)
    if a.docs:
        for shot, doc in DOCS.items():
            shutil.copy(out / f"ui_{shot}.png", REPO / "docs" / doc)
    missing = walk.missing()
    print("all expected texts seen" if not missing else "NOT seen: " + "; ".join(missing))
    return 1 if missing else 0


# screenshot -> the docs/ file the README shows
DOCS = {"deployments": "prefect_deployments.png", "run_form": "prefect_run_form.png",
        "flow_run": "prefect_flow_run.png", "artifacts": "prefect_run_artifacts.png",
        "mlflow_runs": "mlflow_runs.png", "mlflow_run": "mlflow_run.png", "mlflow_model": "mlflow_registry.png"}


if __name__ == "__main__":
    sys.exit(main())
