"""What the flows run, read from the rendered dvc.yaml: stages in file order, grouped by round, GPU flags,
and which stage feeds which.

dvc.yaml is written in dependency order by ``alignloop render``, so file order is a valid run order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alignloop.pipeline.render import entry_paths


@dataclass
class Plan:
    before: list[str] = field(default_factory=list)              # curation, SFT, reward model, SFT evaluation
    rounds: dict[str, list[str]] = field(default_factory=dict)   # round -> its stages, in order
    after: list[str] = field(default_factory=list)               # report
    gpu: set[str] = field(default_factory=set)
    upstream: dict[str, set[str]] = field(default_factory=dict)  # stage -> stages whose outputs it reads
    deps: dict[str, list[str]] = field(default_factory=dict)     # stage -> the paths it reads


def _overlap(a: str, b: str) -> bool:
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def upstream_of(stages: dict) -> dict[str, set[str]]:
    """For each stage, the stages producing a path it depends on (a dep equal to, inside or containing an out)."""
    outs = {n: entry_paths(s.get("outs")) + entry_paths(s.get("metrics")) + entry_paths(s.get("plots")) for n, s in stages.items()}
    return {n: {m for m in stages if m != n and any(_overlap(d, o) for d in entry_paths(s.get("deps")) for o in outs[m])}
            for n, s in stages.items()}


def must_run(name: str, stale: set[str], ran: set[str], upstream: dict[str, set[str]]) -> bool:
    """Whether to hand ``name`` to ``dvc repro``: DVC reported it stale before the run, or a stage it reads from
    ran in this run (whose new outputs DVC could not have seen). Otherwise it is up to date as it stands."""
    return name in stale or bool(upstream.get(name, set()) & ran)


def read_plan(project_dir: str | Path, round_names: list[str]) -> Plan:
    """The plan of the rendered dvc.yaml: each stage's round and GPU flag come from its ``meta`` (written by
    ``alignloop render`` from the stage specs), never from its name."""
    stages = (yaml.safe_load((Path(project_dir) / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {})
    plan = Plan(rounds={r: [] for r in round_names}, upstream=upstream_of(stages))
    for name, stage in stages.items():
        plan.deps[name] = entry_paths(stage.get("deps"))
        meta = stage.get("meta") or {}
        if meta.get("gpu"):
            plan.gpu.add(name)
        owner = meta.get("round")
        if owner is not None:
            plan.rounds.setdefault(owner, []).append(name)
        elif any(plan.rounds.values()):
            plan.after.append(name)
        else:
            plan.before.append(name)
    return plan
