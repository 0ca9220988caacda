"""Open the MLflow UI's registry and runs pages in a real headless browser and save screenshots.

Checks what a user sees after `mlflow ui`: the registered policy with its versions and the `candidate` /
`champion` aliases, and the experiment's runs table — which MLflow 3.17 shows only in its "Model training" view:
the experiment's default page is the GenAI overview (traces, "No data available"), whatever the experiment's tags,
so the runs URL carries `?workflowType=machine_learning` (the toggle at the top left does the same and the browser
remembers it). Needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`) and
selenium (`pip install selenium`); the CI tests check the same through MLflow's REST API instead.

    python bench/mlflow_ui_screenshot.py --store sqlite:///mlflow.db --model alignloop-demo-policy
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="sqlite:///mlflow.db")
    ap.add_argument("--model", default="alignloop-demo-policy")
    ap.add_argument("--experiment-id", default="1", help="the experiment whose runs page to open (default: 1)")
    a = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen([str(bin_dir / "mlflow"), "ui", "--backend-store-uri", a.store, "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        opts = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
            opts.add_argument(flag)
        if Path("/usr/bin/chromium").exists():
            opts.binary_location = "/usr/bin/chromium"
        driver = webdriver.Chrome(options=opts)
        try:
            found = {}
            for page, url, needles in (
                ("models", f"http://127.0.0.1:{port}/#/models/{a.model}", ["Version 1", "champion", "candidate"]),
                ("experiments", f"http://127.0.0.1:{port}/#/experiments", ["alignloop"]),
                ("runs", f"http://127.0.0.1:{port}/#/experiments/{a.experiment_id}/runs?workflowType=machine_learning",
                 ["sft", "reward_model", "dpo_r1", "register_r1", "Duration"]),
            ):
                driver.get(url)
                WebDriverWait(driver, 60).until(lambda d: a.model.split("-policy")[0] in d.find_element(By.TAG_NAME, "body").text)
                time.sleep(3)  # let the tables fill
                body = driver.find_element(By.TAG_NAME, "body").text
                shot = OUT / f"mlflow_ui_{page}.png"
                driver.save_screenshot(str(shot))
                found[page] = {n: (n in body) for n in needles}
                print(f"{page}: {url} -> {shot}; " + ", ".join(f"{n!r} {'seen' if ok else 'NOT seen'}" for n, ok in found[page].items()))
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0 if all(all(v.values()) for v in found.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
