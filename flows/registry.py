"""The registry from the Prefect UI: list versions, promote one by hand, roll the champion back.

Same operations as `alignloop registry list | promote <version> | rollback`, recorded the same way (aliases,
champion history, version descriptions).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from alignloop.pipeline import registry
from alignloop.core.config import load_params
from tasks.artifacts import artifact_key


def _store(project_dir: str) -> None:
    """The project's store, as the stages see it (a relative sqlite URI would follow this process' cwd)."""
    if "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(project_dir).resolve()}/mlflow.db"


def versions_markdown(name: str, rows: list[dict], hist: list[dict]) -> str:
    lines = [f"## `{name}`", "", "| version | round | aliases | gold | proxy | KL | decision |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["tags"]
        first = (r["description"].splitlines() or [""])[0]
        lines.append(f"| {r['version']} | {r['round'] or ''} | {', '.join(r['aliases'])} | {t.get('metric.gold_reward', '')} "
                     f"| {t.get('metric.proxy_reward', '')} | {t.get('metric.kl_to_sft', '')} | {first} |")
    if hist:
        lines += ["", "Champion history: " + " → ".join(f"v{h['version']} ({h['by']})" for h in hist)]
    return "\n".join(lines) + "\n"


@flow(name="alignloop-registry")
def registry_flow(action: Literal["list", "promote", "rollback"] = "list", version: str | None = None,
                  reason: str = "from the Prefect UI", project_dir: str = ".", model: str | None = None) -> dict:
    """List, promote or roll back versions of the round policies.

    Args:
        action: list | promote (needs version) | rollback (champion back to the one before it).
        version: the version to promote.
        reason: recorded in the champion history and the version's description.
        project_dir: the working copy whose params.yaml names the experiment (and whose mlflow.db is the store
            unless MLFLOW_TRACKING_URI is set).
        model: registered model name (default '<experiment>-policy').
    """
    log = get_run_logger()
    _store(project_dir)
    name = model or load_params(Path(project_dir) / "params.yaml").model_name
    result: dict = {}
    if action == "promote":
        if not version:
            raise ValueError("promote needs a version (fix: set the 'version' parameter)")
        result = registry.promote(name, version, reason=reason)
    elif action == "rollback":
        result = registry.rollback(name, reason=reason)
    if result:
        log.info("%s: %s", action, result)
    rows, hist = registry.versions(name), registry.history(name)
    create_markdown_artifact(key=artifact_key(name, "registry"), markdown=versions_markdown(name, rows, hist),
                             description=f"{name}: versions and aliases")
    return {"model": name, **result, "versions": len(rows)}
