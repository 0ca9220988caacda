"""Retention of old rounds' policy weights: keep the last few rounds and every policy the registry points at, drop
the rest from the workspace and the DVC cache, and say so where users look.

Why alignloop does this and not ``dvc gc`` alone (DVC 3.67, checked): ``dvc gc --workspace`` removes only cache
objects no output in dvc.lock references, and every round's policy stays referenced for as long as its stage is in
dvc.yaml, so gc never frees an old round. A drop here removes the round's ``policy/`` from the workspace and its
objects from ``.dvc/cache`` — except objects a kept output or a registered version still needs (identical files,
e.g. tokenizer files, are one object shared by every round) — and records the drop in ``.alignloop/retention.json``
before deleting anything, so a killed drop is finished by the next one. ``retention.gc`` then runs ``dvc gc
--workspace`` for what is unreferenced anyway (outputs of earlier params), refusing when that would delete the
weights of a registered version that dvc.lock no longer names.

DVC afterwards reports a dropped policy "deleted" and the stages reading it changed. ``dvc repro --allow-missing``
skips stages whose only change is missing data, and the flows' stale check ignores exactly the dropped paths;
``alignloop repro`` (``make repro``) adds the flag only when rounds were dropped, after re-running any stage whose
outputs are missing for another reason (a killed run), which ``--allow-missing`` alone would skip too.
A dropped round comes back with ``alignloop retain --restore <round>`` (its training stage again, or ``dvc pull``
from a remote).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alignloop.core.files import read_json, write_json
from alignloop.pipeline import layout
from alignloop.pipeline.tracking import dvc_object, lock_outs

RECORD = layout.RETENTION
MISSING = ("deleted", "not in cache")  # what `dvc status --json` says of an output or dep whose data is gone
DROPPED_TAG = "weights"  # model-version tag set on a dropped round's versions (shown in the MLflow UI)


class RetentionError(RuntimeError):
    """Retention cannot proceed; the message says why and how to fix it."""


# --- pure decisions ----------------------------------------------------------------------------------------------

def rounds_to_drop(order: list[str], keep_last: int, protected: set[str], dropped: set[str]) -> list[str]:
    """Rounds of ``order`` (oldest first) whose policies go: all but the last ``keep_last``, never a ``protected``
    one, none twice. ``keep_last`` 0 keeps everything."""
    if keep_last <= 0:
        return []
    return [r for r in order[:-keep_last] if r not in protected and r not in dropped]


def only_dropped(entries: list, dropped_paths: set[str]) -> bool:
    """Whether one stage's ``dvc status --json`` entries are all missing data at dropped paths (nothing else
    changed), e.g. ``[{"changed deps": {"data/rounds/r1/policy": "deleted"}}]``."""
    for entry in entries:
        if not isinstance(entry, dict):
            return False  # "always changed", "changed checksum", ...: a real change
        for kind, changes in entry.items():
            if kind not in ("changed deps", "changed outs") or not isinstance(changes, dict):
                return False
            if any(path not in dropped_paths or state not in MISSING for path, state in changes.items()):
                return False
    return True


def stale_after_retention(status: dict[str, list], dropped_paths: set[str]) -> list[str]:
    """The stages of a ``dvc status --json`` that really need a run once the dropped paths are discounted."""
    return sorted(s for s, entries in status.items() if not only_dropped(entries, dropped_paths))


def missing_not_dropped(status: dict[str, list], dropped_paths: set[str]) -> list[str]:
    """Stages with an output whose data is missing though retention did not drop it (a killed or interrupted run):
    ``dvc repro --allow-missing`` would skip them, so they are run first."""
    out = []
    for stage, entries in status.items():
        for entry in entries:
            outs = entry.get("changed outs", {}) if isinstance(entry, dict) else {}
            if any(state in MISSING and path not in dropped_paths for path, state in outs.items()):
                out.append(stage)
                break
    return sorted(out)


def unreferenced_protected(protected_md5: dict[str, str], lock_md5s: set[str]) -> dict[str, str]:
    """Registered policies (label -> md5) dvc.lock no longer names: ``dvc gc --workspace`` would delete them."""
    return {label: md5 for label, md5 in protected_md5.items() if md5 not in lock_md5s}


# --- the project's state -----------------------------------------------------------------------------------------

def read_record(root: Path) -> dict[str, dict]:
    """round -> {path, md5, bytes, at} of every round whose policy is dropped ({} when none is). A recorded path that
    exists again (re-made by hand, e.g. `dvc repro --force`) is no longer dropped, and its objects are kept."""
    path = root / RECORD
    recorded = read_json(path).get("dropped", {}) if path.exists() else {}
    return {r: d for r, d in recorded.items() if not (root / d["path"]).exists()}


def dropped_paths(root: Path) -> set[str]:
    return {d["path"] for d in read_record(root).values()}


def _write_record(root: Path, dropped: dict[str, dict]) -> None:
    write_json(root / RECORD, {"dropped": dict(sorted(dropped.items()))})


def objects(root: Path, md5: str) -> set[Path]:
    """The cache objects of one output: the file's, or a directory's ``.dir`` listing and every file in it."""
    obj = root / dvc_object(md5)
    if not md5.endswith(".dir"):
        return {obj}
    try:
        listing = json.loads(obj.read_text())
    except (OSError, ValueError):
        return {obj}
    return {obj} | {root / dvc_object(e["md5"]) for e in listing}


def _size(paths: set[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def registered_policies(params) -> dict[str, dict]:
    """Policies the registry still points at (registry.pointed_at); {} with the registry off. An unreachable
    registry is an error, never "nothing to protect"."""
    if not params.registry.enabled:
        return {}
    from alignloop.pipeline import registry

    try:
        return registry.pointed_at(params.model_name)
    except Exception as exc:  # noqa: BLE001 - a connection error, a locked or damaged store: all stop retention
        raise RetentionError(f"cannot read the registry at {registry.tracking_uri()}: {exc} (fix: start the "
                             "tracking server or set MLFLOW_TRACKING_URI; retention drops nothing it cannot "
                             "check)") from None


# --- actions -----------------------------------------------------------------------------------------------------

def plan(root: Path, params) -> dict[str, Any]:
    """What ``apply`` would do: rounds to drop with their bytes, and what protects the others."""
    outs = lock_outs(str(root / layout.DVC_LOCK))
    registered = registered_policies(params)
    protected = {p["round"]: label for label, p in registered.items() if p["round"]}
    # a round is protected by content too: the champion's weights may be another round's identical output
    protected_md5 = {p["md5"] for p in registered.values() if p["md5"]}
    protected |= {r: "same weights as a registered version" for r in params.rounds
                  if outs.get(layout.policy_dir(r)) in protected_md5 and r not in protected}
    done = read_record(root)
    order = [r for r in params.rounds if layout.policy_dir(r) in outs]  # rounds that have run
    drop = rounds_to_drop(order, params.retention.keep_last, set(protected), set(done))
    return {"drop": {r: {"path": layout.policy_dir(r), "md5": outs[layout.policy_dir(r)]} for r in drop},
            "protected": protected, "registered": registered, "kept_last": order[-params.retention.keep_last:]
            if params.retention.keep_last else order, "already_dropped": sorted(done), "outs": outs}


def apply(root: Path, params, dry_run: bool = False, log=print) -> dict[str, Any]:
    """Drop the planned rounds (workspace + cache objects nothing kept shares), tag their registry versions, then
    ``dvc gc --workspace`` if ``retention.gc``. Returns the plan with bytes freed."""
    p = plan(root, params)
    record = read_record(root)
    gone_paths = {d["path"] for d in [*p["drop"].values(), *record.values()]}
    keep_objs: set[Path] = set()
    for path, md5 in p["outs"].items():
        if path not in gone_paths:
            keep_objs |= objects(root, md5)
    for reg in p["registered"].values():
        if reg["md5"]:
            keep_objs |= objects(root, reg["md5"])
    freed = 0
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for r, d in p["drop"].items():
        gone = objects(root, d["md5"]) - keep_objs
        size = _size(gone)
        log(f"retention: {'would drop' if dry_run else 'dropping'} {r} ({d['path']}, {size / 2**20:.1f} MiB "
            f"in the DVC cache)")
        if dry_run:
            continue
        record[r] = {**d, "bytes": size, "at": now}
        _write_record(root, record)  # first: a drop killed half-way is recorded, and finished by the next run
        shutil.rmtree(root / d["path"], ignore_errors=True)
        for obj in gone:
            obj.unlink(missing_ok=True)
        freed += size
    if record and not dry_run:  # every dropped round, again: a drop killed before this point is tagged too
        _tag_versions(params, record)
    if params.retention.gc and not dry_run:
        lock_md5s = set(p["outs"].values())
        at_risk = unreferenced_protected({f"{label} (version {reg['version']}, {reg['round']})": reg["md5"]
                                          for label, reg in p["registered"].items() if reg["md5"]}, lock_md5s)
        if at_risk:
            raise RetentionError(
                "retention.gc: `dvc gc --workspace` would delete the weights of " + ", ".join(at_risk) + ", which "
                "dvc.lock no longer names (fix: promote a current round, or `dvc checkout` the commit that made "
                "it and re-run; or set retention.gc: false)")
        _dvc(root, "gc", "--workspace", "--force")
    return {**{k: v for k, v in p.items() if k != "outs"}, "freed_bytes": freed}


def _tag_versions(params, record: dict[str, dict]) -> None:
    """Mark every registry version of a dropped round (with those weights) so the MLflow UI says where they went."""
    if params.registry.enabled:
        from alignloop.pipeline import registry

        for r, d in record.items():
            registry.tag_round_versions(params.model_name, r, DROPPED_TAG, f"dropped by retention at {d['at']} "
                                        f"(restore: alignloop retain --restore {r})", d["md5"])


def restore(root: Path, params, round_name: str, log=print) -> str:
    """Bring a dropped round's policy back: ``dvc pull`` when a remote has it, else its training stage again.
    Returns how. A stage re-run on other hardware may give other bytes: DVC then re-runs what reads them."""
    record = read_record(root)
    if round_name not in record:
        raise RetentionError(f"round {round_name} was not dropped (dropped: {sorted(record) or 'none'})")
    d = record[round_name]
    how = "pulled from the DVC remote"
    if _dvc(root, "pull", d["path"], check=False, capture=True).returncode != 0:  # no remote, or it lacks them
        stage, deps = _producer(root, d["path"])
        missing = [p for p in deps if not (root / p).exists()]
        if missing:
            raise RetentionError(f"{stage} needs {', '.join(missing)}, dropped too (fix: restore those rounds first)")
        log(f"retention: no remote has {d['path']}; re-running {stage}")
        _dvc(root, "repro", "--force", "--single-item", stage)
        how = f"re-ran {stage}"
        now = lock_outs(str(root / layout.DVC_LOCK)).get(d["path"])
        if now != d["md5"]:  # e.g. another host's float rounding ("Reproducing" in the README)
            how += f"; its bytes differ from the dropped ones (md5 {now}, was {d['md5']}): DVC re-runs what reads it"
    del record[round_name]
    _write_record(root, record)
    if params.registry.enabled:
        from alignloop.pipeline import registry

        registry.tag_round_versions(params.model_name, round_name, DROPPED_TAG, None)
    return how


def repro(root: Path, args: list[str], log=print) -> int:
    """``dvc repro`` that leaves dropped rounds dropped: plain when nothing was dropped; otherwise stages missing
    data for another reason run first (``--force --single-item``), then ``dvc repro --allow-missing``."""
    dropped = dropped_paths(root)
    if not dropped:
        return _dvc(root, "repro", *args, check=False).returncode
    status = json.loads(_dvc(root, "status", "--json", capture=True).stdout or "{}")
    for stage in missing_not_dropped(status, dropped):
        log(f"alignloop repro: {stage}'s outputs are missing (not dropped by retention): running it first")
        rc = _dvc(root, "repro", "--force", "--single-item", stage, check=False).returncode
        if rc:
            return rc
    log(f"alignloop repro: {len(dropped)} dropped round(s) in {RECORD}: dvc repro --allow-missing")
    return _dvc(root, "repro", "--allow-missing", *args, check=False).returncode


def _producer(root: Path, path: str) -> tuple[str, list[str]]:
    """The stage of dvc.yaml that writes ``path``, and the paths it reads."""
    import yaml

    from alignloop.pipeline.render import entry_paths

    stages = yaml.safe_load((root / layout.DVC_YAML).read_text()).get("stages", {})
    for name, st in stages.items():
        if path in entry_paths(st.get("outs")):
            return name, entry_paths(st.get("deps"))
    raise RetentionError(f"no stage in {layout.DVC_YAML} writes {path} (fix: `alignloop render`)")


def _dvc(root: Path, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, text=True, capture_output=capture,
                          env={**os.environ})
    if check and done.returncode != 0:
        said = (done.stderr or "").strip().splitlines()[-1:] if capture else ["its output is above"]
        raise RetentionError(f"`dvc {' '.join(args)}` failed with exit code {done.returncode} ({said[0] if said else ''})")
    return done
