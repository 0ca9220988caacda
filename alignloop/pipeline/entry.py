"""What every stage's ``main`` shares: argument parsing, the stale-render check, the multi-GPU relaunch and turning
known errors into clear exits."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from collections.abc import Callable

from alignloop.core.config import ConfigError, Params, load_params
from alignloop.core.files import DataError
from alignloop.pipeline.specs import StageSpec


def stage_main(spec: StageSpec, body: Callable[[Params, argparse.Namespace], None], *,
               extra_rounds: tuple[str, ...] = (), flags: tuple[tuple[str, str], ...] = (),
               options: tuple[tuple[str, str], ...] = (), argv: list[str] | None = None, track: bool = True) -> int:
    """Parse ``--params`` (and ``--round``), load and validate params, run ``body``.

    Bad params, bad data and missing inputs end with ``error: ...`` on stderr and exit code 2, not a traceback:
    the messages already name the file, the line and the fix.

    Once params are valid the body runs inside the execution's MLflow run (``tracking.live_run``: RUNNING while it
    works, then FINISHED, FAILED with the error, or KILLED). ``track=False``: no run (a generation shard worker,
    whose stage run is the merging one). In accelerate workers only rank 0 opens it.
    """
    name, needs_round = spec.module.rsplit(".", 1)[-1], spec.scope == "round"
    parser = argparse.ArgumentParser(prog=f"python -m {spec.module}", description=spec.help)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if needs_round:
        parser.add_argument("--round", required=True, help="round name from params.yaml 'rounds'")
    for flag, help_ in flags:  # (flag, help): on/off switches of a module with more than one stage
        parser.add_argument(flag, action="store_true", help=help_)
    for option, help_ in options:  # (option, help): a valued choice, e.g. which stage of a module with several
        parser.add_argument(option, required=True, help=help_)
    args = parser.parse_args(argv)
    # Tokenizers' own thread pool fights torch's for 2 cores; DVC runs stages one at a time anyway.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        params = load_params(args.params)
        if Path("dvc.yaml").exists() and not os.environ.get("ALIGNLOOP_SKIP_RENDER_CHECK"):
            from alignloop.pipeline.render import stale_message

            stale = stale_message(args.params, "dvc.yaml", values=True)
            if stale:
                raise ConfigError(stale)
        if needs_round and args.round not in params.rounds and args.round not in extra_rounds:
            raise ConfigError(
                f"{args.params}: no round '{args.round}' under 'rounds' (fix: one of {[*extra_rounds, *params.rounds]}, "
                "or add it and run `alignloop render`)"
            )
        from alignloop.ml.launch import die_with_parent, maybe_relaunch

        # More than one GPU visible, or train.processes >= 2: a training stage reruns itself as accelerate workers and
        # exits with their status (alignloop/ml/launch.py); otherwise, or for any other stage, this is None and it
        # runs here (file-only stages do not import torch for the question).
        code = maybe_relaunch(name, sys.argv[1:] if argv is None else list(argv), params.train.distributed,
                              params.train.processes)
        if code is not None:
            return code
        die_with_parent()  # a worker of such a relaunch ends with its launcher, killed or not
        if spec.gpu:  # the stages that run a model
            from alignloop.ml.modeling import set_threads

            set_threads()
        if track and os.environ.get("RANK", "0") == "0":
            from alignloop.pipeline.tracking import live_run

            round_name = args.round if needs_round else None
            with live_run(params.experiment, spec.stage_name(round_name), spec.name, round_name):
                body(params, args)
        else:
            body(params, args)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
