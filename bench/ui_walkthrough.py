"""Walk through the Prefect and MLflow UIs as a new user would, in headless Chromium, and save screenshots.

Starts a Prefect server and `python -m flows.serve` on a finished project (after `make demo`), submits the pipeline
deployment through the UI's own Custom-run form (defaults: nothing to rerun), waits for the run to complete,
opens its page and its Artifacts tab, then the MLflow runs table and the registered model. Prints what each page
showed and exits non-zero if an expected text is missing.

    apt-get install chromium chromium-driver && pip install selenium
    python bench/ui_walkthrough.py --project-dir .      # screenshots in bench/out/ui_*.png

Not part of CI (it needs Chromium and selenium, which the lock file does not install).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what: str, check, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"timed out waiting for {what}")


def api(base: str, path: str, body: dict | None = None):
    req = urllib.request.Request(base + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project-dir", default=".")
    a = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    project = Path(a.project_dir).resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    port, mport = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": f"{base}/api",
           "PREFECT_HOME": tempfile.mkdtemp(prefix="prefect-home-"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db"}
    logs = {n: open(OUT / f"ui_{n}.log", "w") for n in ("prefect", "serve", "mlflow")}
    procs = [subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=logs["prefect"], stderr=subprocess.STDOUT)]
    seen: dict[str, dict[str, bool]] = {}
    try:
        wait("the Prefect server", lambda: api(base, "/api/health") is not None)
        procs.append(subprocess.Popen([sys.executable, "-m", "flows.serve", "--project-dir", str(project), "--paused"],
                                      cwd=REPO, env=env, stdout=logs["serve"], stderr=subprocess.STDOUT))
        deps: list = []

        def served() -> bool:
            deps[:] = api(base, "/api/deployments/filter", {})
            return len(deps) >= 3

        wait("the served deployments", served)
        pipeline_dep = next(d for d in deps if d["name"].endswith("pipeline-on-schedule"))

        opts = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
            opts.add_argument(flag)
        if Path("/usr/bin/chromium").exists():
            opts.binary_location = "/usr/bin/chromium"
        driver = webdriver.Chrome(options=opts)

        def page(name: str, url: str, needles: list[str], settle: float = 6) -> str:
            driver.get(url)
            time.sleep(settle)
            body = driver.find_element(By.TAG_NAME, "body").text
            driver.save_screenshot(str(OUT / f"ui_{name}.png"))
            seen[name] = {n: n in body for n in needles}
            print(f"{name}: {url}\n  " + ", ".join(f"{n!r} {'seen' if ok else 'NOT seen'}" for n, ok in seen[name].items()))
            return body

        try:
            page("deployments", f"{base}/deployments",
                 ["pipeline-on-schedule", "one-round-on-demand", "registry-operations"])
            page("run_form", f"{base}/deployments/deployment/{pipeline_dep['id']}/run",
                 ["round_settings", "Beta (Optional)", "KL strength"])
            submit = [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Submit"]
            assert submit, "no Submit button on the run form"
            submit[-1].click()  # the form's defaults: rounds 0, nothing to set, so every stage is up to date
            runs: list = []

            def finished() -> bool:
                runs[:] = api(base, "/api/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [pipeline_dep["id"]]}}})
                return bool(runs) and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED")

            wait("the submitted flow run", finished, timeout=900)
            run = runs[0]
            print(f"flow run {run['name']}: {run['state_type']}")
            seen["run_state"] = {"COMPLETED": run["state_type"] == "COMPLETED"}
            # (the run graph is drawn on a canvas: its node names are not page text, the screenshot shows them)
            page("flow_run", f"{base}/runs/flow-run/{run['id']}", ["Completed", "pipeline-on-schedule", "Artifacts"])
            # the deepest element whose text is exactly "Artifacts" (the tab), clicked as a user would
            clicked = driver.execute_script(
                "const els = [...document.querySelectorAll('*')].filter(e => e.innerText && e.innerText.trim() === "
                "'Artifacts' && ![...e.children].some(c => c.innerText && c.innerText.trim() === 'Artifacts'));"
                "if (!els.length) return false; els[els.length - 1].click(); return true;")
            assert clicked, "no Artifacts tab on the flow run page"
            time.sleep(4)
            body = driver.find_element(By.TAG_NAME, "body").text
            driver.save_screenshot(str(OUT / "ui_artifacts.png"))
            needles = ["-rounds", "-rounds-summary"]
            seen["artifacts"] = {n: n in body for n in needles}
            print("artifacts tab:\n  " + ", ".join(f"{n!r} {'seen' if ok else 'NOT seen'}" for n, ok in seen["artifacts"].items()))
        finally:
            driver.quit()
        procs.append(subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{project}/mlflow.db",
                                       "--host", "127.0.0.1", "--port", str(mport)], stdout=logs["mlflow"],
                                      stderr=subprocess.STDOUT))
        wait("the MLflow UI", lambda: urllib.request.urlopen(f"http://127.0.0.1:{mport}/health", timeout=2))
        driver = webdriver.Chrome(options=opts)
        try:
            page("mlflow_runs", f"http://127.0.0.1:{mport}/#/experiments/1/runs?workflowType=machine_learning",
                 ["sft", "reward_model", "dpo_r1", "Duration"], settle=10)
        finally:
            driver.quit()
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0 if all(all(v.values()) for v in seen.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
