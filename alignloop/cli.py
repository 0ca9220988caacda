"""The ``alignloop`` command: inspect config, render dvc.yaml, print the params reference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from alignloop.core.config import ConfigError, field_help, load_params

def cmd_config(args) -> int:
    """The effective, validated config: all of it, or exactly the values one stage reads (from its spec)."""
    params = load_params(args.params)
    resolved = params.resolved()
    if args.stage is None:
        out = params.model_dump(mode="json")
    else:
        from alignloop.pipeline.specs import Ctx, all_specs

        specs = {s.name: s for s in all_specs()}
        spec = specs.get(args.stage)
        if spec is None:
            raise ConfigError(f"unknown stage '{args.stage}' (fix: one of {sorted(specs)})")
        if spec.scope == "round" and not args.round:
            raise ConfigError(f"stage '{args.stage}' runs once per round (fix: add --round, one of {list(params.rounds)})")
        if args.round and args.round not in params.rounds:
            raise ConfigError(f"no round '{args.round}' (fix: one of {list(params.rounds)})")
        out = {}
        for key in spec.param_keys(Ctx(params, args.round if spec.scope == "round" else None)):
            node = resolved
            for part in key.split("."):
                node = node[part]
            out[key.split(".", 2)[2] if key.startswith("rounds.") else key] = node  # a round's: its effective value
    print(yaml.safe_dump(out, sort_keys=False), end="")
    return 0


def cmd_render(args) -> int:
    from alignloop.pipeline.render import stale_message, write_rendered

    if args.check:
        msg = stale_message(args.params, args.output)
        if msg:
            print(f"error: {msg}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date with {args.params}")
        return 0
    changed = write_rendered(args.params, args.output)
    print(f"wrote {', '.join(map(str, changed))}" if changed else f"{args.output} is up to date with {args.params}")
    return 0


def cmd_params_ref(args) -> int:
    print("| key | default | meaning |\n|---|---|---|")
    for key, default, help_text in field_help():
        print(f"| `{key}` | {('`' + default + '`') if default else ''} | {help_text} |")
    return 0


def cmd_preset(args) -> int:
    """Merge a preset (configs/*.yaml) over params.yaml, validate, print the changed keys, re-render dvc.yaml."""
    import json
    import shlex

    from alignloop.pipeline.params_edit import edit_params, read_preset
    from alignloop.pipeline.render import write_rendered

    overrides = read_preset(args.file)
    if args.dvc_exp:
        # The stages read params.resolved.yaml, which only `alignloop render` writes: `dvc exp run -S key=value` edits
        # params.yaml alone and would leave the stages' params unchanged. An experiment applies the preset first.
        print(f"alignloop preset {shlex.quote(str(args.file))}   # params.yaml, dvc.yaml, params.resolved.yaml\n"
              "dvc exp run")
        print("# keys: " + ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()))
        return 0
    result = edit_params(args.params, overrides=overrides)  # what apply_preset does, without reading the file again
    print(f"{args.params}: {len(result['changed'])} key(s) changed by {args.file}")
    for key in result["changed"]:
        print(f"  {key} = {overrides[key]!r}")
    changed = write_rendered(args.params)
    print(f"wrote {', '.join(map(str, changed)) or 'nothing new'}; next: dvc repro")
    return 0


def cmd_registry(args) -> int:
    from alignloop.pipeline import registry

    name = args.model or load_params(args.params).model_name
    if args.action == "list":
        rows = registry.versions(name)
        print(f"{name}: {len(rows)} version(s)")
        print(f"{'version':>7}  {'round':<8} {'aliases':<20} {'gold':>7} {'proxy':>7} {'KL':>6}  decision")
        for r in rows:
            t = r["tags"]
            first = (r["description"].splitlines() or [""])[0]
            print(f"{r['version']:>7}  {r['round'] or '':<8} {','.join(r['aliases']):<20} "
                  f"{t.get('metric.gold_reward', ''):>7} {t.get('metric.proxy_reward', ''):>7} "
                  f"{t.get('metric.kl_to_sft', ''):>6}  {first}")
        hist = registry.history(name)
        if hist:
            print("champion history: " + " -> ".join(f"v{h['version']} ({h['by']})" for h in hist))
    elif args.action == "promote":
        if not args.version:
            raise ConfigError("registry promote needs a version (fix: `alignloop registry promote 3`)")
        print(registry.promote(name, args.version, reason=args.reason or "manual"))
    elif args.action == "rollback":
        print(registry.rollback(name, reason=args.reason or "rollback"))
    elif args.action == "path":
        print(registry.resolve(f"models:/{name}@{args.version or 'champion'}"))
    return 0


def cmd_retain(args) -> int:
    """Drop old rounds' policy weights as ``retention`` in params.yaml says (or restore one)."""
    from alignloop.pipeline import retention

    params, root = load_params(args.params), Path(args.params).resolve().parent
    if args.restore:
        print(f"retention: {args.restore} restored ({retention.restore(root, params, args.restore)})")
        return 0
    if params.retention.keep_last == 0 and not args.dry_run:
        print("retention.keep_last is 0: every round is kept (set it in params.yaml to drop older rounds)")
        return 0
    res = retention.apply(root, params, dry_run=args.dry_run)
    for r, label in sorted(res["protected"].items()):
        print(f"retention: keeping {r} ({label})")
    print(f"retention: kept the last {params.retention.keep_last or 'all'}: {', '.join(res['kept_last']) or 'none'}; "
          f"dropped {', '.join(res['drop']) or 'nothing new'}"
          + (f" ({res['freed_bytes'] / 2**20:.1f} MiB freed)" if not args.dry_run else " (dry run)")
          + (f"; dropped before: {', '.join(res['already_dropped'])}" if res["already_dropped"] else ""))
    return 0


def cmd_repro(args) -> int:
    """``dvc repro`` that leaves the rounds retention dropped dropped (see alignloop.pipeline.retention.repro)."""
    from alignloop.pipeline import retention

    return retention.repro(Path(args.params).resolve().parent, args.dvc_args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="alignloop", description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("config", help="print the effective, validated config (of one stage with --stage)")
    p.add_argument("--stage", help="only the sections this stage reads")
    p.add_argument("--round", help="with --stage: apply this round's overrides")
    p.set_defaults(fn=cmd_config)
    p = sub.add_parser("render", help="write dvc.yaml and params.resolved.yaml from params.yaml (--check: fail if stale)")
    p.add_argument("--check", action="store_true")
    p.add_argument("--output", default="dvc.yaml")
    p.set_defaults(fn=cmd_render)
    p = sub.add_parser("registry", help="model registry: list | promote <version> | rollback | path [alias]")
    p.add_argument("action", choices=["list", "promote", "rollback", "path"])
    p.add_argument("version", nargs="?", help="promote: the version; path: the alias (default champion)")
    p.add_argument("--model", help="registered model (default: '<experiment>-policy' from params)")
    p.add_argument("--reason", help="recorded with a promote or rollback")
    p.set_defaults(fn=cmd_registry)
    p = sub.add_parser("preset", help="merge a preset (e.g. configs/gpu-small.yaml) over params.yaml and re-render")
    p.add_argument("file", help="preset YAML: a partial params.yaml")
    p.add_argument("--dvc-exp", action="store_true", help="only print how to run the preset as a DVC experiment")
    p.set_defaults(fn=cmd_preset)
    p = sub.add_parser("retain", help="drop old rounds' policy weights as params.yaml's retention says (--dry-run: "
                       "only say what would go; --restore <round>: bring one back)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--restore", metavar="ROUND", help="bring a dropped round's policy back (dvc pull, or re-run it)")
    p.set_defaults(fn=cmd_retain)
    p = sub.add_parser("repro", help="dvc repro, leaving rounds dropped by retention dropped (--allow-missing)")
    p.add_argument("dvc_args", nargs="*", help="everything after `repro`, passed on to dvc repro as given")
    p.set_defaults(fn=cmd_repro)
    p = sub.add_parser("params-ref", help="print the params reference (markdown)")
    p.set_defaults(fn=cmd_params_ref)
    argv = sys.argv[1:] if argv is None else list(argv)
    passed_on = []
    if "repro" in argv:  # `alignloop repro --force x`: dvc's options are dvc's, not for argparse to reject
        i = argv.index("repro")
        argv, passed_on = argv[: i + 1], argv[i + 1:]
    args = parser.parse_args(argv)
    if args.cmd == "repro":
        args.dvc_args = passed_on
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # registry errors (and MLflow's own "not found") as one clear line
        from alignloop.pipeline.registry import RegistryError
        from alignloop.pipeline.retention import RetentionError

        if isinstance(exc, (RegistryError, RetentionError)) or type(exc).__name__ == "MlflowException":
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
