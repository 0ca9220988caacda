"""Stage `resolve`: write params.resolved.yaml, every value the other stages read (code defaults included, each
round's sections merged), from params.yaml.

It runs first in `dvc repro` and is cheap, so an edit of params.yaml (or of a default in alignloop/core/config.py)
reaches the stages' tracked params before DVC looks at them, and DVC reruns exactly the stages whose values
changed: an edited docstring or help text reruns this stage alone. A changed DAG (rounds added, another data source)
is not this stage's to fix: it stops with the fix (`alignloop render`).
"""

from __future__ import annotations

import sys

from alignloop.pipeline import layout
from alignloop.pipeline.specs import StageSpec

SPECS = [StageSpec(
    name="resolve", module="alignloop.pipeline.stages.resolve", scope="before", order=-1,
    help="params.resolved.yaml from params.yaml and the code defaults (what every stage's params point into)",
    code=("alignloop.core.config",), deps=lambda c: [layout.PARAMS],
    uncached_outs=lambda c: [layout.RESOLVED_PARAMS],
)]


def main(argv=None) -> int:
    import argparse

    from alignloop.core.config import ConfigError, load_params
    from alignloop.core.files import atomic_file
    from alignloop.pipeline.render import render_text, resolved_text

    parser = argparse.ArgumentParser(prog=f"python -m {SPECS[0].module}", description=SPECS[0].help)
    parser.add_argument("--params", default=layout.PARAMS, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        with open(layout.DVC_YAML, encoding="utf-8") as fh:
            if fh.read() != render_text(params):
                raise ConfigError(f"{layout.DVC_YAML} does not match {args.params} (rounds or sources changed since it "
                                  "was rendered) (fix: run `alignloop render`, then `dvc repro`)")
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with atomic_file(layout.RESOLVED_PARAMS) as fh:
        fh.write(resolved_text(params))
    print(f"resolve: wrote {layout.RESOLVED_PARAMS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
