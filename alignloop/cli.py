"""The ``alignloop`` command: inspect config, render dvc.yaml, print the params reference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from alignloop.config import ConfigError, field_help, load_params

STAGE_SECTIONS = {
    "prepare": ["seed", "task"],
    "curate": ["seed", "data", "curate"],
    "base": ["seed", "model"],
    "sft": ["seed", "model", "sft"],
    "reward_model": ["seed", "model", "reward_model"],
    "generate": ["seed", "model", "generate"],
    "score": ["model", "score"],
    "pairs": ["pairs"],
    "dpo": ["seed", "model", "dpo"],
    "evaluate": ["model", "evaluate"],
}


def cmd_config(args) -> int:
    params = load_params(args.params)
    if args.stage is None:
        out = params.model_dump(mode="json")
    elif args.stage not in STAGE_SECTIONS:
        raise ConfigError(f"unknown stage '{args.stage}' (fix: one of {sorted(STAGE_SECTIONS)})")
    else:
        out = {k: v for k, v in params.model_dump(mode="json").items() if k in STAGE_SECTIONS[args.stage]}
        if args.round:
            if args.round not in params.rounds:
                raise ConfigError(f"no round '{args.round}' (fix: one of {list(params.rounds)})")
            for section in ("generate", "score", "pairs", "dpo"):
                if section in out:
                    out[section] = params.round_section(args.round, section).model_dump(mode="json")
    print(yaml.safe_dump(out, sort_keys=False), end="")
    return 0


def cmd_render(args) -> int:
    from alignloop.render import render_file, stale_message

    if args.check:
        msg = stale_message(args.params, args.output)
        if msg:
            print(f"error: {msg}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date with {args.params}")
        return 0
    text = render_file(args.params)
    Path(args.output).write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


def cmd_params_ref(args) -> int:
    print("| key | default | meaning |\n|---|---|---|")
    for key, default, help_text in field_help():
        print(f"| `{key}` | {('`' + default + '`') if default else ''} | {help_text} |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="alignloop", description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("config", help="print the effective, validated config (of one stage with --stage)")
    p.add_argument("--stage", help="only the sections this stage reads")
    p.add_argument("--round", help="with --stage: apply this round's overrides")
    p.set_defaults(fn=cmd_config)
    p = sub.add_parser("render", help="write dvc.yaml from params.yaml (--check: fail if stale)")
    p.add_argument("--check", action="store_true")
    p.add_argument("--output", default="dvc.yaml")
    p.set_defaults(fn=cmd_render)
    p = sub.add_parser("params-ref", help="print the params reference (markdown)")
    p.set_defaults(fn=cmd_params_ref)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
