"""Stage specs: the one declaration of what a stage is.

Each stage module under ``alignloop/pipeline/stages/`` declares its ``SPECS`` (usually one): its name, the params
keys it reads, the code that computes its outputs, its inputs and outputs, whether it runs a model. Everything
else is derived from these: ``alignloop render`` writes dvc.yaml and params.resolved.yaml from them,
``alignloop config --stage`` prints what a stage reads, the Prefect plan takes GPU slots and round membership from
the rendered ``meta``, and checkpoint and shard fingerprints hash the same code list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alignloop.core.config import PREFERENCE_ALGOS, Params

ROOT = Path(__file__).resolve().parents[2]  # the project root: alignloop/ lives in it


@dataclass(frozen=True)
class Ctx:
    """What a spec's functions see: the validated params and, for a round stage, the round's name."""

    params: Params
    round: str | None = None

    @property
    def rnd(self):
        return self.params.rounds[self.round]

    @property
    def rejection_sampled(self) -> bool:
        """Whether the round samples and scores responses first: raft and lipo rounds, and dpo rounds on sampled
        pairs."""
        return self.rnd.algo in ("raft", "lipo") or (self.rnd.algo == "dpo" and self.section("dpo").pairs == "sampled")

    @property
    def self_play(self) -> bool:
        """Whether the round samples responses that its training stage ranks with the preference model (sppo, dno,
        inpo): sampled, not scored by the reward."""
        return self.rnd.algo in PREFERENCE_ALGOS

    @property
    def samples_drawn(self) -> bool:
        """Whether the round's generate stage runs."""
        return self.rejection_sampled or self.self_play

    def gold_preference_keys(self) -> list[str]:
        """The task keys a stage's gold metrics read on the embedded task's intransitive variant (P_gold's weight and
        temperature); none otherwise, so the transitive task's stages track exactly what they did before."""
        p = self.params
        if p.data.source == "embedded" and p.task.intransitive > 0:
            return ["task.intransitive", "task.annotator_temperature"]
        return []

    def section(self, name: str):
        """A section as this stage sees it: the round's merged one for a round stage, else the top-level one."""
        return self.params.round_section(self.round, name) if self.round else getattr(self.params, name)


def _none(ctx: Ctx) -> list:
    return []


def _always(ctx: Ctx) -> bool:
    return True


@dataclass(frozen=True)
class StageSpec:
    name: str                       # "dpo"; a round stage is rendered as "dpo_<round>"
    module: str                     # its entry point, run as `python -m <module>`
    scope: Literal["before", "round", "after"]  # before the rounds, once per round, or after all rounds
    order: int                      # position within its scope (dvc.yaml is written in this order)
    help: str                       # one line: what it does
    code: tuple[str, ...]           # modules (besides its own) whose code computes its outputs
    params: tuple[str, ...] = ()    # top-level params keys it reads (sections or dotted keys)
    round_params: tuple[str, ...] = ()  # keys of its round it reads: prev, algo, start, or a round section
    deps: Callable[[Ctx], list[str]] = _none     # data inputs (files or directories)
    outs: Callable[[Ctx], list[str]] = _none     # cached outputs
    metrics: Callable[[Ctx], list[str]] = _none  # uncached metrics files (`dvc metrics show`)
    plots: Callable[[Ctx], list[str]] = _none    # uncached plot files (`dvc plots show`)
    uncached_outs: Callable[[Ctx], list[str]] = _none  # uncached, non-metric outputs (committed to git)
    extra_code: Callable[[Ctx], list[str]] = _none  # code modules only some settings use
    extra_params: Callable[[Ctx], list[str]] = _none  # params keys only some settings read (full dotted keys)
    applies: Callable[[Ctx], bool] = _always     # whether the stage exists for these params (and round)
    dvc_plots: Callable[[Ctx], list] = _none     # dvc.yaml top-level plot definitions this stage's outputs feed
    gpu: bool = False               # runs a model: the Prefect flows give it a GPU slot
    args: str = ""                  # fixed arguments after the module (e.g. evaluate of SFT: "--round sft")

    def stage_name(self, round_name: str | None) -> str:
        return f"{self.name}_{round_name}" if self.scope == "round" else self.name

    def code_modules(self, ctx: Ctx) -> list[str]:
        return list(dict.fromkeys([self.module, *self.code, *self.extra_code(ctx)]))

    def code_files(self, ctx: Ctx) -> list[str]:
        """The code deps, as paths relative to the project root."""
        return [module_path(m) for m in self.code_modules(ctx)]

    def param_keys(self, ctx: Ctx) -> list[str]:
        keys = list(self.params)
        if self.scope == "round":
            keys += [f"rounds.{ctx.round}.{k}" for k in self.round_params]
        return list(dict.fromkeys(keys + self.extra_params(ctx)))


def module_path(module: str) -> str:
    return module.replace(".", "/") + ".py"


def code_paths(spec: StageSpec, params: Params, round_name: str | None = None) -> list[Path]:
    """Absolute paths of a stage's code, for fingerprints (checkpoints, shards) that must match its DVC code deps."""
    return [ROOT / p for p in spec.code_files(Ctx(params, round_name))]


def all_specs() -> list[StageSpec]:
    """Every stage module's SPECS, in (scope, order). Stage modules import only light modules at top level, so this
    costs milliseconds."""
    from alignloop.pipeline import stages

    specs = []
    for info in pkgutil.iter_modules(stages.__path__):
        mod = importlib.import_module(f"{stages.__name__}.{info.name}")
        specs.extend(getattr(mod, "SPECS", ()))
    rank = {"before": 0, "round": 1, "after": 2}
    return sorted(specs, key=lambda s: (rank[s.scope], s.order, s.name))

