"""Typed parameters for the Prefect UI's run form: one round's common settings as fields, not a free dict.

The form's values become dotted params keys (``rounds.r3.dpo.beta``) applied with the run's ``overrides``, so a
form run edits params.yaml exactly as the same keys typed into ``overrides`` would, and `dvc repro` reproduces it.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignloop.core.config import ALGO_SECTION
from alignloop.pipeline.params_edit import new_rounds


class RoundSettings(BaseModel):
    """Settings of one round. Fields left at their defaults (empty, 0) keep what params.yaml (and its top-level
    sections) says. No field is Optional: Prefect's form draws an `X | None` field as a type to choose ("None")
    before a value can be typed."""

    model_config = ConfigDict(extra="forbid")

    round: str = Field("", description="The round to set, e.g. r3. Empty: the last round, after `rounds` has added "
                       "any (so with `rounds` one more than params.yaml has, these settle the new round).")
    algo: Literal["", "dpo", "ppo", "raft", "grpo", "rloo", "reinforce_pp", "sppo", "dno", "inpo", "lipo"] = Field(
        "", description="The round's algorithm (empty: as in params.yaml; a new round repeats the last one's).")
    lr: float = Field(0.0, ge=0, description="Learning rate of the round's training (<algo>.lr: dpo, ppo, raft, "
                      "grpo, rloo, sppo, dno, inpo, lipo; reinforce_pp rounds: ppo.lr); 0: as in params.yaml.")
    beta: float = Field(0.0, ge=0, description="DPO, GRPO, RLOO, DNO and LiPO rounds: KL strength to the reference "
                        "(<algo>.beta; higher stays closer); 0: as in params.yaml.")
    epochs: float = Field(0.0, ge=0, description="DPO, RAFT, SPPO, DNO, INPO and LiPO rounds: passes over the "
                          "round's data; 0: as in params.yaml.")
    iterations: int = Field(0, ge=0, description="PPO and REINFORCE++ rounds: rollout-then-optimise iterations "
                            "(ppo.iterations); 0: as in params.yaml.")
    n: int = Field(0, ge=0, description="Samples generated per prompt for the round (generate.n); 0: as in "
                   "params.yaml.")


# field -> the algorithms whose section (config.ALGO_SECTION) has it
_FIELDS: dict[str, tuple[str, ...]] = {"lr": ("dpo", "ppo", "raft", "grpo", "rloo", "reinforce_pp", "sppo", "dno",
                                              "inpo", "lipo"),
                                       "beta": ("dpo", "grpo", "rloo", "dno", "lipo"),
                                       "epochs": ("dpo", "raft", "sppo", "dno", "inpo", "lipo"),
                                       "iterations": ("ppo", "reinforce_pp")}


def rounds_after(names: list[str], algos: dict[str, str], total: int) -> tuple[list[str], dict[str, str]]:
    """The round names and algorithms once a run asking for ``total`` rounds has added its rounds (as
    alignloop.pipeline.params_edit.extend_rounds adds them: each repeats the last round's algorithm)."""
    added = new_rounds(names, algos[names[-1]] if names else "dpo", total)
    return [*names, *(n for n, _, _ in added)], {**algos, **{n: a for n, a, _ in added}}


def round_overrides(settings: RoundSettings, names: list[str], algos: dict[str, str]) -> dict[str, Any]:
    """Dotted params keys for the form's set fields ({} when none is set). Raises ValueError, with the fix, for an
    unknown round or a field the round's algorithm does not have."""
    given = settings.model_dump(exclude_defaults=True, exclude={"round"})
    if not given:
        return {}
    r = settings.round or (names[-1] if names else "")
    if r not in names:
        raise ValueError(f"round_settings.round {r!r}: not a round of params.yaml or of this run (fix: one of "
                         f"{names}, or raise `rounds` to add it)")
    algo = settings.algo or algos[r]
    out: dict[str, Any] = {}
    if settings.algo:
        out[f"rounds.{r}.algo"] = settings.algo
    for field, value in given.items():
        if field == "algo":
            continue
        if field == "n":
            out[f"rounds.{r}.generate.n"] = value
            continue
        if algo not in _FIELDS[field]:
            raise ValueError(f"round_settings.{field}: round {r} is a {algo} round, which has no {field} (fix: clear "
                             f"it, or set algo to one of {list(_FIELDS[field])})")
        out[f"rounds.{r}.{ALGO_SECTION[algo]}.{field}"] = value
    return out


def current_values(resolved: dict) -> dict[str, str]:
    """What each form field keeps when left empty: the values of ``resolved`` params (Params.resolved()) for the
    last round, as the form shows them. Fields the last round's algorithm lacks say so instead of a value."""
    rounds: dict = resolved.get("rounds", {})
    if not rounds:
        return {"rounds": "0"}
    last = list(rounds)[-1]
    rnd = rounds[last]
    out = {"rounds": f"{len(rounds)} (" + ", ".join(f"{n} {r['algo']}" for n, r in rounds.items()) + ")",
           "round": last, "algo": rnd["algo"], "n": str(rnd["generate"]["n"])}
    for field, algos in _FIELDS.items():
        out[field] = (f"{rnd[ALGO_SECTION[rnd['algo']]][field]}" if rnd["algo"] in algos
                      else f"none ({last} is a {rnd['algo']} round; {'/'.join(algos)} rounds only)")
    return out


def with_current_values(schema: dict, current: dict[str, str]) -> dict:
    """A copy of a flow's parameter schema whose ``rounds`` and round-settings field descriptions end with the
    value each keeps when left empty, so the run form shows params.yaml's values beside the 0/empty defaults."""
    out = deepcopy(schema)
    note = "params.yaml now: {}."

    def add(prop: dict, key: str) -> None:
        if key in current:
            prop["description"] = f"{prop.get('description', '').rstrip()} {note.format(current[key])}".strip()

    add(out.get("properties", {}).get("rounds", {}), "rounds")
    for key, prop in out.get("definitions", {}).get("RoundSettings", {}).get("properties", {}).items():
        add(prop, key)
    return out
