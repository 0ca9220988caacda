"""The MLflow model registry of round policies: a version per round, `candidate` and `champion` aliases, promotion
history, rollback. Used by the `register` stage, the `alignloop registry` CLI and the registry flow.

Facts this relies on (MLflow 3, checked): ``MlflowClient.create_model_version`` accepts a local directory as the
version's source, and ``mlflow.artifacts.download_artifacts("models:/<name>@<alias>")`` then returns that
directory, so by default no weights are copied: a version records where the policy is and its content hash, and
``resolve`` refuses a path whose content no longer matches. ``registry.log_weights`` uploads them instead.

Idempotency and concurrency: find-or-create of a version (keyed by round and content hash) and every alias move
happen under an exclusive file lock next to a sqlite store, so two pipelines registering into one store at once
neither duplicate nor lose a version; sqlite's "database is locked" is retried.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alignloop.pipeline.tracking import DEFAULT_TRACKING_URI, content_hash, store_lock

HISTORY_TAG = "champion_history"  # registered-model tag: JSON list of champion moves, newest last
HISTORY_KEEP = 40


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says why and how to fix it."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def client():
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


def _retry(fn, *args, attempts: int = 8, **kwargs):
    """Call ``fn``, retrying while sqlite reports the database locked by another writer."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MLflow wraps the sqlite error in several exception types
            if "database is locked" not in str(exc) or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _history(c, name: str) -> list[dict]:
    tags = _retry(c.get_registered_model, name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _set_champion(c, name: str, version: str, event: dict) -> None:
    """Point `champion` at ``version`` and append ``event`` to the history (caller holds the lock)."""
    history = _history(c, name)
    _retry(c.set_registered_model_alias, name, "champion", version)
    history.append({"version": str(version), "at": _now(), **event})
    _retry(c.set_registered_model_tag, name, HISTORY_TAG, json.dumps(history[-HISTORY_KEEP:]))


def _ensure_model(c, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _retry(c.get_registered_model, name)
    except MlflowException:
        _retry(c.create_registered_model, name, description="Policies of the alignloop rounds; aliases "
               "`candidate` (latest round) and `champion` (promoted by the gate).")


def find_version(c, name: str, round_name: str, policy_md5: str):
    found = _retry(c.search_model_versions, f"name = '{name}' and tags.round = '{round_name}'")
    same = [v for v in found if v.tags.get("policy_md5") == policy_md5]
    return min(same, key=lambda v: int(v.version)) if same else None


def register_round(*, name: str, round_name: str, source: str, policy_md5: str, run_id: str | None,
                   tags: dict[str, str], promote: bool, decision: str) -> dict:
    """Find or create the version of ``round_name``'s policy, set `candidate`, and `champion` if ``promote``.

    Registering the same round with the same content again returns the existing version and changes nothing
    else, so a rerun, a retry, or a crash after registration never makes a duplicate.
    """
    c = client()
    with store_lock():
        _ensure_model(c, name)
        version = find_version(c, name, round_name, policy_md5)
        created = version is None
        if created:
            version = _retry(c.create_model_version, name, source=source, run_id=run_id,
                             tags={**tags, "round": round_name, "policy_md5": policy_md5}, description=decision)
        v = str(version.version)
        _retry(c.set_registered_model_alias, name, "candidate", v)
        aliases = _retry(c.get_registered_model, name).aliases
        # Promote once per version: a replay of an earlier round (a full `dvc repro --force`, a rerun after a
        # later round was promoted) must not drag `champion` back; a crash between creating the version and
        # moving the alias has no gate entry yet, so the rerun completes it.
        promoted_before = any(h["version"] == v and h.get("by") == "gate" for h in _history(c, name))
        if promote and str(aliases.get("champion")) != v and not promoted_before:
            _set_champion(c, name, v, {"by": "gate", "round": round_name})
    return {"version": v, "created": created}


def versions(name: str) -> list[dict]:
    """Every version with its round, tags, aliases and description, oldest first."""
    c = client()
    model = _retry(c.get_registered_model, name)
    by_version: dict[str, list[str]] = {}
    for alias, v in model.aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    for v in _retry(c.search_model_versions, f"name = '{name}'"):
        rows.append({"version": str(v.version), "round": v.tags.get("round"), "aliases": sorted(by_version.get(str(v.version), [])),
                     "tags": dict(v.tags), "source": v.source, "description": v.description or ""})
    return sorted(rows, key=lambda r: int(r["version"]))


def pointed_at(name: str) -> dict[str, dict]:
    """The versions something points at — each alias (``champion``, ``candidate``, any other) and the
    ``rollback target`` (the champion before the current one) — as label -> {version, round, md5}. {} while the
    model is not registered yet. Retention keeps these policies' weights."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        model = _retry(c.get_registered_model, name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    labels = {alias: str(v) for alias, v in model.aliases.items()}
    stack = champion_stack(_history(c, name))
    if len(stack) >= 2:
        labels["rollback target"] = stack[-2]
    out = {}
    for label, v in labels.items():
        mv = _retry(c.get_model_version, name, v)
        out[label] = {"version": v, "round": mv.tags.get("round"), "md5": mv.tags.get("policy_md5", "")}
    return out


def tag_round_versions(name: str, round_name: str, key: str, value: str | None, policy_md5: str | None = None) -> list[str]:
    """Set (``value`` None: delete) tag ``key`` on the versions of ``round_name`` (those with ``policy_md5`` if
    given); returns their numbers. How retention marks a round whose weights it dropped."""
    c = client()
    done = []
    with store_lock():
        for v in _retry(c.search_model_versions, f"name = '{name}' and tags.round = '{round_name}'"):
            if policy_md5 is not None and v.tags.get("policy_md5") != policy_md5:
                continue
            if value is None:
                if key in v.tags:
                    _retry(c.delete_model_version_tag, name, v.version, key)
            else:
                _retry(c.set_model_version_tag, name, v.version, key, value)
            done.append(str(v.version))
    return done


def history(name: str) -> list[dict]:
    return _history(client(), name)


def champion_stack(hist: list[dict]) -> list[str]:
    """Replay the history: promotions (gate or manual) push a version, a rollback pops one. The top is the
    champion; the one below it is where the next rollback goes."""
    stack: list[str] = []
    for h in hist:
        if h.get("by") == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(str(h["version"]))
    return stack


def promote(name: str, version: str, reason: str = "manual") -> dict:
    """Make ``version`` the champion by hand (recorded in the history and the version's description)."""
    c = client()
    with store_lock():
        v = _retry(c.get_model_version, name, str(version))
        _set_champion(c, name, str(v.version), {"by": "manual", "reason": reason})
        _retry(c.update_model_version, name, str(v.version),
               description=(v.description or "") + f"\n\n{_now()}: promoted to champion by hand ({reason}).")
    return {"champion": str(version)}


def rollback(name: str, reason: str = "rollback") -> dict:
    """Move `champion` back to the version that held it before the current one; recorded like any move."""
    c = client()
    with store_lock():
        hist = _history(c, name)
        current = _retry(c.get_registered_model, name).aliases.get("champion")
        if current is None:
            raise RegistryError(f"{name}: no champion to roll back (fix: promote a version first)")
        stack = champion_stack(hist)
        previous = stack[-2] if len(stack) >= 2 else None
        if previous is None:
            raise RegistryError(f"{name}: version {current} is the only champion so far, nothing to roll back to "
                                "(fix: `alignloop registry promote <version>` to choose one)")
        _set_champion(c, name, previous, {"by": "rollback", "from": str(current), "reason": reason})
        old = _retry(c.get_model_version, name, str(current))
        _retry(c.update_model_version, name, str(current),
               description=(old.description or "") + f"\n\n{_now()}: rolled back; champion is now version {previous}.")
    return {"champion": previous, "from": str(current)}


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> (name, version, alias)."""
    if not uri.startswith("models:/"):
        raise RegistryError(f"{uri}: not a model URI (fix: models:/<name>@champion or models:/<name>/<version>)")
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, None, alias
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise RegistryError(f"{uri}: not a model URI (fix: models:/<name>@champion or models:/<name>/<version>)")
    return name, version, None


def resolve(uri: str) -> str:
    """A local directory for ``models:/<name>@<alias>`` (or ``/<version>``), checked against its content hash."""
    import mlflow

    name, version, alias = parse_model_uri(uri)
    c = client()
    v = _retry(c.get_model_version_by_alias, name, alias) if alias else _retry(c.get_model_version, name, version)
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    path = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    expected = v.tags.get("policy_md5")
    # Versions registered before the hash was DVC's (32 hex digits for a directory, no ".dir") keep their old check.
    legacy = expected and Path(path).is_dir() and not expected.endswith(".dir")
    if expected and (_legacy_content_hash(path) if legacy else content_hash(path)) != expected:
        raise RegistryError(
            f"{uri} (version {v.version}) points at {v.source}, whose content changed since it was registered "
            f"(fix: `dvc checkout` the round that produced it, or register the current policy again)")
    return path


def _legacy_content_hash(path: str | Path) -> str:
    """The policy hash of versions registered by alignloop before 2026-12: md5 over names and bytes, sorted."""
    import hashlib

    path = Path(path)
    h = hashlib.md5()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def describe(decision: dict[str, Any]) -> str:
    """The version description: the gate's decision and its reasons."""
    verdict = "PROMOTED to champion" if decision["promoted"] else "stays candidate (champion unchanged)"
    champ = decision["champion_before"]
    lines = [f"Round {decision['round']}: {verdict}.",
             f"Compared with champion: {champ['round']}" + (f" (version {champ['version']})" if champ.get("version") else "") + "."]
    lines += [f"- {r}" for r in decision["reasons"]]
    return "\n".join(lines)

