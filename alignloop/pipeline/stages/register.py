"""Stage `register`: register a round's policy in the MLflow registry and apply the promotion gate.

The candidate is compared with the champion after the previous round's registration (SFT before any round is
promoted) on ``registry.gate``; the decision and its reasons go to ``data/rounds/<round>/registry.json`` (which
the next round reads when it starts from the champion) and to the version's description. Registering the same
round again returns the existing version.
"""

from __future__ import annotations

import sys
from pathlib import Path


from alignloop.core import files
from alignloop.core.config import ROUND_METRICS as METRICS
from alignloop.core.gate import gate_decision
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.layout import eval_paths, registry_record
from alignloop.pipeline.specs import StageSpec
from alignloop.pipeline.tracking import content_hash, git_commit, lock_entry, stage_run

SPECS = [StageSpec(
    name="register", module="alignloop.pipeline.stages.register", scope="round", order=5,
    help="MLflow registry version, candidate alias, promotion gate -> champion",
    code=("alignloop.core.gate", "alignloop.pipeline.lineage", "alignloop.pipeline.registry", "alignloop.pipeline.tracking"),
    params=("experiment", "registry", "llm_judge.enabled"), round_params=("prev", "algo", "start"),
    deps=lambda c: [eval_paths(c.round)[0], layout.policy_dir(c.round),
                    eval_paths("sft")[0] if c.rnd.prev == "sft" else registry_record(c.rnd.prev),
                    *([layout.llm_judge_metrics(c.round)] if c.params.llm_judge.enabled else [])],
    uncached_outs=lambda c: [registry_record(c.round)],
    applies=lambda c: c.params.registry.enabled,
)]


def _metrics(path: str) -> dict:
    return {k: v for k, v in files.read_json(path).items() if k in METRICS}


def _dvc_tags(stage: str) -> dict[str, str]:
    """The DVC record of the stage that trained the policy: its deps' and outs' md5s and its params' md5."""
    import hashlib

    entry = lock_entry(stage)
    tags = {f"dvc.{d['path']}": d.get("md5", "") for d in entry.get("deps", []) + entry.get("outs", [])
            if d.get("path", "").startswith("data/")}
    tags["dvc.params_md5"] = hashlib.md5(json_dump(entry.get("params", {})).encode()).hexdigest()
    tags["dvc_lock_md5"] = hashlib.md5(json_dump(entry).encode()).hexdigest()
    return tags


def json_dump(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True, default=str)


def run(params, args) -> None:
    from alignloop.pipeline.registry import describe, register_round

    r = args.round
    reg = params.registry
    rnd = params.rounds[r]
    name = params.model_name
    policy = layout.policy_dir(r)
    ev = files.read_json(eval_paths(r)[0])
    if params.llm_judge.enabled:  # the LLM judge's verdicts count as evaluation metrics for the gate and the tags
        ev.update(files.read_json(layout.llm_judge_metrics(r)))
    candidate = {k: v for k, v in ev.items() if k in METRICS}
    if rnd.prev == "sft":
        sft = _metrics(eval_paths("sft")[0])
        if params.llm_judge.enabled:  # SFT against itself, as evaluate writes for the other judges
            sft.update({f"{lc}win_rate_vs_{b}_llm": 0.5 for lc in ("", "lc_") for b in ("sft", "champion")})
        champion = {"round": "sft", "version": None, "path": layout.policy_dir("sft"), "metrics": sft}
        parent = "sft"
    else:
        prev_rec = files.read_json(registry_record(rnd.prev))
        champion = prev_rec["champion_after"]
        parent = prev_rec["version"]
    lows = {m: ev[f"{m}_ci"]["low"] for m in reg.gate.lower_bound if isinstance(ev.get(f"{m}_ci"), dict)}
    promote, reasons = gate_decision(candidate, champion["metrics"], beat=reg.gate.beat_champion,
                                     min_improvement=reg.gate.min_improvement, caps=reg.gate.max, floors=reg.gate.min,
                                     lower_bounds=reg.gate.lower_bound, lows=lows)
    md5 = content_hash(policy)
    decision = {"round": r, "promoted": promote, "reasons": reasons, "champion_before": champion}
    tags = {"algo": rnd.algo, "parent_version": str(parent), "prev": rnd.prev, "git_commit": git_commit(),
            "experiment": params.experiment, **_dvc_tags(f"{rnd.algo}_{r}"),
            **{f"metric.{k}": f"{v:.6g}" for k, v in candidate.items()}}
    with stage_run(params.experiment, "register", {"registry": reg.model_dump(), "prev": rnd.prev}, r) as run:
        if reg.log_weights:
            run.log_artifacts(policy, "policy")
            source = f"{run.artifact_uri}/policy"
        else:  # record where the weights are and their hash; nothing multi-GB is copied
            source = str(Path(policy).resolve())
        result = register_round(name=name, round_name=r, source=source, policy_md5=md5, run_id=run.run_id, tags=tags,
                                promote=promote, decision=describe(decision))
        run.log_metrics({"promoted": float(promote), "version": float(result["version"])})
    champion_after = ({"round": r, "version": result["version"], "path": policy, "metrics": candidate} if promote
                      else champion)
    # Neither whether this execution created the version nor the weights' absolute path or artifact URI (the version's
    # `source` in MLflow): a rerun after a kill finds the version the killed one created, another clone has another
    # path, and the record must come out byte-identical (tests/test_crash_resume.py checks it).
    record = {**decision, "model_name": name, "version": result["version"],
              "policy": {"path": policy, "md5": md5}, "metrics": candidate,
              "champion_after": champion_after, "candidate_uri": f"models:/{name}/{result['version']}"}
    files.write_json(registry_record(r), record)
    verdict = "promoted to champion" if promote else f"stays candidate (champion: {champion['round']})"
    print(f"register {r}: {name} version {result['version']} ({'new' if result['created'] else 'existing'}), {verdict}")
    for line in reasons:
        print(f"  {line}")


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
