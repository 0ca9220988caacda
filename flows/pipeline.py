"""The pipeline flow (curate → SFT → reward model → rounds → report) and the round flow.

Each step is one DVC stage run by ``dvc repro --single-item`` in dvc.yaml order, so DVC skips what is up to
date and the flow keeps no state of its own: the run's settings (number of rounds, overrides from the UI form)
are written into params.yaml first, and ``dvc repro`` afterwards reproduces exactly what the flow ran.

    python -m flows.pipeline --rounds 5 --set rounds.r5.dpo.beta=0.5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from alignloop.core.config import ConfigError, Params, load_params
from alignloop.pipeline.params_edit import edit_params
from alignloop.pipeline.render import write_rendered
from alignloop.pipeline.retention import RetentionError, dropped_paths, stale_after_retention
from flows.forms import RoundSettings, round_overrides, rounds_after
from flows.plan import Plan, must_run, read_plan
from tasks._proc import StageFailed, error_text, stage_env, stream
from tasks.artifacts import publish_pipeline, publish_round
from tasks.gpu import ensure_limit, gpu_devices
from tasks.stages import run_stage, stage_shard


@task(name="apply-run-params", cache_policy=NO_CACHE)
def apply_run_params(project_dir: str, rounds: int | None, overrides: dict[str, Any] | None,
                     round_settings: RoundSettings | None = None) -> dict:
    """Write the run's settings into params.yaml and re-render dvc.yaml; both are left as DVC will read them. The
    form's round settings become the same dotted keys ``overrides`` takes (``overrides`` wins where both set one);
    everything is validated together before params.yaml is touched."""
    log = get_run_logger()
    root = Path(project_dir)
    if round_settings is not None:
        current = load_params(root / "params.yaml")
        names, algos = rounds_after(list(current.rounds), {n: r.algo for n, r in current.rounds.items()}, rounds or 0)
        try:
            overrides = {**round_overrides(round_settings, names, algos), **(overrides or {})}
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    result = edit_params(root / "params.yaml", rounds=rounds, overrides=overrides)
    if result["changed"]:
        log.info("params.yaml: set %s (see `git diff params.yaml`)", ", ".join(result["changed"]))
    if write_rendered(root / "params.yaml"):
        log.info("dvc.yaml and params.resolved.yaml re-rendered from params.yaml")
    return {"changed": result["changed"], "added_rounds": result["added_rounds"]}


@task(name="dvc-status", cache_policy=NO_CACHE, retries=1)
def stale_stages(project_dir: str, stage: str | None = None) -> list[str]:
    """Stages ``dvc status`` reports as changed (one DVC call for the whole pipeline, or one stage), less those
    whose only change is a policy retention dropped (its data "deleted" on purpose: nothing to re-run)."""
    cmd = [sys.executable, "-m", "dvc", "status", "--json", *([stage] if stage else [])]
    out = subprocess.run(cmd, cwd=project_dir, env=stage_env(None), capture_output=True, text=True, check=True).stdout
    return stale_after_retention(json.loads(out or "{}"), dropped_paths(Path(project_dir)))


@task(name="retention", cache_policy=NO_CACHE, retries=1)
def apply_retention(project_dir: str) -> None:
    """``alignloop retain``: drop old rounds' policies as params.yaml's retention says (the flow's last step)."""
    log = get_run_logger()
    code, lines = stream([sys.executable, "-m", "alignloop", "retain"], project_dir, stage_env(None), log.info)
    if code != 0:
        raise StageFailed("retention", code, error_text(lines), retryable=False)


def _stage_task(params: Params, gpu: bool):
    o = params.orchestration
    return run_stage.with_options(retries=o.retries, retry_delay_seconds=o.retry_delay_s,
                                  tags=["dvc", "gpu"] if gpu else ["dvc"])


def _step(name: str, root: str, params: Params, plan: Plan, devices: list[str], stale: set[str],
          ran: set[str]) -> dict:
    """One stage as a task; handed to DVC only if it may be stale, else reported up to date without a DVC call."""
    gpu, run = name in plan.gpu, must_run(name, stale, ran, plan.upstream)
    gone = sorted(set(plan.deps.get(name, [])) & dropped_paths(Path(root))) if run else []
    if gone:
        raise RetentionError(f"stage {name} must run but reads {', '.join(gone)}, whose weights retention dropped "
                             f"(fix: `alignloop retain --restore <round>` for {', '.join(gone)}, then run again)")
    result = _stage_task(params, gpu)(name, root, devices if gpu else None, current=not run)
    ran.update(result["ran_stages"])
    return result


@contextmanager
def _ray(use_ray: bool, ray_address: str | None, shards: int):
    """prefect-ray's task runner for the round flows, on one Ray instance for the whole pipeline run.

    Only shard tasks are submitted to the runner (stages run in the flow's process, one at a time under DVC's
    lock), so Ray is started only when there are shards to spread.
    """
    if not use_ray or shards < 2:
        if use_ray:
            get_run_logger().warning("use_ray: nothing to spread with orchestration.generate_shards and "
                                     "score_shards = 1 (fix: set them to the number of GPUs or Ray workers)")
        yield None
        return
    import ray
    from prefect_ray import RayTaskRunner  # optional extra: pip install -e '.[ray]'

    owned = not ray.is_initialized()
    if owned:
        ray.init(address=ray_address or None)  # empty: a local instance
    try:
        yield RayTaskRunner()  # sees the initialised Ray and uses it
    finally:
        if owned:
            ray.shutdown()


def _will_compute(root: str, name: str) -> bool:
    """Whether DVC will really compute stage ``name``: not when it is up to date, nor when only its outputs are
    missing from the workspace (``dvc checkout`` restores them from the cache, as ``dvc repro`` would), so no shard
    work is wasted there. A stage DVC restores from its run cache (inputs changed back to an earlier state) is not
    caught here: its shards are computed and then unused."""
    if not stale_stages(root, name):
        return False
    subprocess.run([sys.executable, "-m", "dvc", "checkout", "--quiet", name], cwd=root, env=stage_env(None),
                   capture_output=True)
    return bool(stale_stages(root, name))


@contextmanager
def _shard_placement():
    """Under Ray: each shard task asks for one CPU, and one GPU when the cluster has any, so Ray spreads shards
    over nodes by their free resources. Yields whether shards go to Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        yield False
        return
    from prefect_ray.context import remote_options

    with remote_options(num_cpus=1, num_gpus=1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0):
        yield True


@flow(name="alignloop-round", flow_run_name="round-{round_name}")
def round_flow(round_name: str, project_dir: str = ".", stale: list[str] | None = None,
               ran: list[str] | None = None) -> list[dict]:
    """Run one round's stages (e.g. generate → score → pairs → dpo → evaluate) and publish its artifact.

    Args:
        round_name: a round of params.yaml, e.g. r2.
        project_dir: the alignloop working copy.
        stale, ran: set by the pipeline flow (DVC's status at its start, stages it has run). Leave empty when
            running a round on its own: DVC first brings the stages the round depends on up to date.
    """
    root = str(Path(project_dir).resolve())
    params = load_params(Path(root) / "params.yaml")
    plan = read_plan(root, list(params.rounds))
    devices = gpu_devices(params.orchestration.gpus)
    results = []
    if stale is None:
        names = list(plan.rounds)
        before = plan.before + [s for r in names[: names.index(round_name)] for s in plan.rounds[r]]
        gpu = any(s in plan.gpu for s in before)
        results.append(_stage_task(params, gpu)(f"upstream-of-{round_name}", root, devices if gpu else None,
                                                single_item=False, targets=before))
        stale = stale_stages(root)
    stale_set, ran_set = set(stale), set(ran or [])
    o = params.orchestration
    shards = {f"generate_{round_name}": o.generate_shards, f"score_{round_name}": o.score_shards}
    if params.round_section(round_name, "generate").budget.strategy != "uniform":
        shards[f"generate_{round_name}"] = 1  # a budget is decided over all prompts at once: the stage draws them all
    for name in plan.rounds[round_name]:
        k = shards.get(name, 1)
        if k > 1 and must_run(name, stale_set, ran_set, plan.upstream) and _will_compute(root, name):
            # Shards run concurrently (threads, or Ray tasks under RayTaskRunner — on any node of the cluster),
            # one GPU slot each; the DVC stage then merges them into the very output a single process writes.
            kind = name.rsplit("_", 1)[0]
            with _shard_placement() as on_ray:
                # On Ray the task's GPU is Ray's to assign (CUDA_VISIBLE_DEVICES on whichever node it lands);
                # the flow machine's device list means nothing there.
                futures = [stage_shard.with_options(name=f"{name}-shard-{i}-of-{k}", retries=o.retries)
                           .submit(kind, round_name, i, k, root, None if on_ray else devices) for i in range(k)]
            for f in futures:
                f.result()
        results.append(_step(name, root, params, plan, devices, stale_set, ran_set))
    publish_round(round_name, root, params.experiment, results)
    return results


@flow(name="alignloop-pipeline")
def pipeline(project_dir: str = ".", rounds: int = 0, round_settings: RoundSettings = RoundSettings(),
             overrides: dict[str, Any] = {}, use_ray: bool = False,  # noqa: B006 (read, never mutated)
             ray_address: str = "") -> list[dict]:
    """The whole loop: curation, SFT, reward model, every round, report.

    Args:
        project_dir: the alignloop working copy (params.yaml, dvc.yaml) to run in.
        rounds: total number of rounds; more than params.yaml has appends rounds that repeat the last round's
            algorithm and start from it (finished rounds are skipped by DVC). 0: as in params.yaml.
        round_settings: one round's algorithm, learning rate, DPO beta, epochs, PPO iterations, samples per prompt
            (the last round unless `round` names one); empty fields keep params.yaml's values.
        overrides: any other params to set, dotted keys, e.g. {"dpo.beta": 0.2, "rounds.r4.dpo.lr": 1e-4}.
            Both are written into params.yaml, so `dvc repro` reproduces the run.
        use_ray: run generation and scoring shards (orchestration.generate_shards, score_shards > 1) as Ray tasks
            (needs '.[ray]').
        ray_address: Ray cluster address (e.g. 10.0.0.1:6379 of `ray start --head`); empty starts a local instance.

    No parameter is Optional (`X | None`): Prefect's form would draw it as a type to pick before typing a value.
    """
    root = str(Path(project_dir).resolve())
    apply_run_params(root, rounds or None, overrides, round_settings)
    params = load_params(Path(root) / "params.yaml")
    plan = read_plan(root, list(params.rounds))
    devices = gpu_devices(params.orchestration.gpus)
    ensure_limit(devices)
    stale, ran = set(stale_stages(root)), set()
    results = [_step(name, root, params, plan, devices, stale, ran) for name in plan.before]
    per_round = {}
    o = params.orchestration
    with _ray(use_ray, ray_address, max(o.generate_shards, o.score_shards)) as runner:
        for r in plan.rounds:
            one_round = round_flow.with_options(task_runner=runner) if runner else round_flow
            out = per_round[r] = one_round(r, root, stale=sorted(stale), ran=sorted(ran))
            ran.update(s for x in out for s in x["ran_stages"])
            results += out
    results += [_step(name, root, params, plan, devices, stale, ran) for name in plan.after]
    if params.retention.keep_last:
        apply_retention(root)
    g = params.registry.gate
    publish_pipeline(root, params.experiment, [*g.beat_champion, *g.lower_bound, *g.min, *g.max], per_round)
    return results


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. dpo.beta=0.2")
        out[key] = yaml.safe_load(value)  # 0.2 -> float, true -> bool, sft -> str
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.pipeline", description=pipeline.__doc__.split("\n")[0])
    ap.add_argument("--project-dir", default=".")
    ap.add_argument("--rounds", type=int, default=0, help="total rounds (0: as in params.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override (repeatable)")
    ap.add_argument("--ray", action="store_true", help="generation and scoring shards as Ray tasks")
    ap.add_argument("--ray-address", default="", help="Ray cluster address (default: a local instance)")
    a = ap.parse_args(argv)
    results = pipeline(project_dir=a.project_dir, rounds=a.rounds, overrides=_parse_set(a.set), use_ray=a.ray,
                       ray_address=a.ray_address)
    ran = [r["stage"] for r in results if r["ran"]]
    print(f"pipeline: ran {len(ran)} stage(s): {', '.join(ran) or 'none (all up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
