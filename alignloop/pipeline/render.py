"""Render dvc.yaml and params.resolved.yaml from params.yaml and the stage specs.

DVC pipelines are static DAGs; rounds are a list in params.yaml whose length and algorithms change, so dvc.yaml is
generated here from each stage module's ``SPECS`` (alignloop.pipeline.specs) and committed. ``alignloop render``
rewrites both files, ``alignloop render --check`` (and every stage at start) fails when either is stale.

params.resolved.yaml holds every value a stage reads, defaults included, with each round's sections merged over the
top-level ones; the stages' ``params`` point into it. So changing ``rounds.r2.dpo.beta`` (or a default in
alignloop/core/config.py) reruns exactly the stages that read that value and what follows, and a stage's code deps
are only the modules that compute its outputs, never shared plumbing (config, file helpers, the entry point).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from alignloop.core.config import Params
from alignloop.pipeline import layout
from alignloop.pipeline.specs import Ctx, StageSpec, all_specs

HEADER = "# GENERATED from params.yaml by `alignloop render` -- do not edit; edit params.yaml and re-render.\n"
RESOLVED_HEADER = ("# GENERATED from params.yaml and the code defaults by `alignloop render` -- do not edit.\n"
                   "# Every value the stages read; each round's sections are merged over the top-level ones.\n")


def entry_paths(entries: list | None) -> list[str]:
    """Paths of a dvc.yaml deps/outs/metrics/plots list (entries are strings or {path: options}); for the readers of
    the rendered file (flows/plan.py, retention)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def _instances(params: Params, specs: list[StageSpec]) -> list[tuple[StageSpec, Ctx]]:
    """(spec, context) of every stage these params have, in run order: before, each round in turn, after."""
    out = [(s, Ctx(params)) for s in specs if s.scope == "before"]
    for name in params.rounds:
        out += [(s, Ctx(params, name)) for s in specs if s.scope == "round"]
    out += [(s, Ctx(params)) for s in specs if s.scope == "after"]
    return [(s, c) for s, c in out if s.applies(c)]


def _uncached(paths: list[str]) -> list[dict]:
    return [{p: {"cache": False}} for p in paths]


def stage_entry(spec: StageSpec, ctx: Ctx) -> dict:
    cmd = f"python -m {spec.module}" + (f" {spec.args}" if spec.args else "") + (f" --round {ctx.round}" if ctx.round else "")
    stage: dict = {"cmd": cmd, "deps": list(dict.fromkeys(spec.code_files(ctx) + spec.deps(ctx)))}
    keys = spec.param_keys(ctx)
    if keys:
        stage["params"] = [{layout.RESOLVED_PARAMS: keys}]
    outs = spec.outs(ctx) + _uncached(spec.uncached_outs(ctx))
    if outs:
        stage["outs"] = outs
    for kind in ("metrics", "plots"):
        paths = getattr(spec, kind)(ctx)
        if paths:
            stage[kind] = _uncached(paths)
    meta = ({"gpu": True} if spec.gpu else {}) | ({"round": ctx.round} if ctx.round else {})
    if meta:  # DVC ignores `meta`; the Prefect flows read it (GPU slots, which round a stage belongs to)
        stage["meta"] = meta
    return stage


def render(params: Params, specs: list[StageSpec] | None = None) -> dict:
    """dvc.yaml as a dict for validated ``params``."""
    instances = _instances(params, specs if specs is not None else all_specs())
    stages = {spec.stage_name(ctx.round): stage_entry(spec, ctx) for spec, ctx in instances}
    plots = [p for spec, ctx in instances for p in spec.dvc_plots(ctx)]
    return {"stages": stages, "plots": plots}


class _NoAliases(yaml.SafeDumper):
    """Write shared lists out in full: dvc.yaml is read by people, not only by DVC."""

    def ignore_aliases(self, data) -> bool:
        return True


def render_text(params: Params) -> str:
    return HEADER + yaml.dump(render(params), Dumper=_NoAliases, sort_keys=False, width=120)


def resolved_text(params: Params) -> str:
    return RESOLVED_HEADER + yaml.dump(params.resolved(), Dumper=_NoAliases, sort_keys=False, width=120)


def rendered(params_path: str | Path = layout.PARAMS) -> dict[str, str]:
    """{file name: text} of the two generated files, for ``params_path``."""
    from alignloop.core.config import load_params

    params = load_params(params_path)
    return {layout.DVC_YAML: render_text(params), layout.RESOLVED_PARAMS: resolved_text(params)}


def render_file(params_path: str | Path = layout.PARAMS) -> str:
    """dvc.yaml's text."""
    return rendered(params_path)[layout.DVC_YAML]


def check_reward_functions(params_path: str | Path = layout.PARAMS) -> None:
    """Check every reward function params.yaml names (the top-level reward and each round's) against the project's
    files: a bad name is a ConfigError listing every bad one with its fix now, not a missing-dependency error from
    DVC (the function's module file is a code dependency of the stages that call it) or a failure mid-pipeline."""
    from alignloop.core.config import ConfigError, load_params
    from alignloop.core.rewards import RewardFunctionError, check_reward_function_source

    params = load_params(params_path)
    specs = sorted({s.function for cfg in [params.reward, *(params.round_section(n, "reward") for n in params.rounds)]
                    for s in cfg.sources if s.function})
    errors = []
    for spec in specs:
        try:
            check_reward_function_source(spec, Path(params_path).resolve().parent)
        except RewardFunctionError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError(f"{params_path}: {len(errors)} reward function(s) cannot be used:\n" +
                          "\n".join(f"  {e}" for e in errors))


def write_rendered(params_path: str | Path = layout.PARAMS, dvc_path: str | Path | None = None) -> list[Path]:
    """Write dvc.yaml (at ``dvc_path``, default beside params) and params.resolved.yaml beside it, atomically; the
    paths whose content changed. Every reward function named must import first (check_reward_functions)."""
    from alignloop.core.files import atomic_file

    check_reward_functions(params_path)
    dvc_path = Path(dvc_path) if dvc_path else Path(params_path).with_name(layout.DVC_YAML)
    changed = []
    for name, text in rendered(params_path).items():
        path = dvc_path if name == layout.DVC_YAML else dvc_path.with_name(name)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            with atomic_file(path) as fh:
                fh.write(text)
            changed.append(path)
    return changed


def stale_message(params_path: str | Path = layout.PARAMS, dvc_path: str | Path = layout.DVC_YAML, *,
                  values: bool = False) -> str | None:
    """None when dvc.yaml matches params.yaml (with ``values``, params.resolved.yaml too), else how to fix it.

    A changed value alone leaves dvc.yaml as it is: `dvc repro` runs the ``resolve`` stage first, which rewrites
    params.resolved.yaml. Stages check ``values`` too, so a stage run on its own never reads stale values."""
    dvc_path = Path(dvc_path)
    for name, text in rendered(params_path).items():
        if name == layout.RESOLVED_PARAMS and not values:
            continue
        path = dvc_path if name == layout.DVC_YAML else dvc_path.with_name(name)
        if not path.exists():
            return f"{path}: missing (fix: run `alignloop render`)"
        if path.read_text(encoding="utf-8") != text:
            return (f"{path} does not match {params_path} (params, rounds, sources or a code default changed since it "
                    "was rendered) (fix: run `alignloop render`, then `dvc repro`)")
    return None
