"""Programmable rewards (pure): named Python reward functions and the combination of a round's reward sources.

A round's reward (``reward`` in params.yaml) is a list of sources — the reward model(s) and Python functions named
``module:function`` — combined by a weighted sum or by MaxMin-RLHF's objective (the worst z-normalised source).
A reward function follows TRL's reward-function contract, ``f(prompts, completions, **kwargs) -> list[float]``;
here the keyword is ``meta``, one dict per row (the prompt's ``meta`` from the curated prompts):

    def my_reward(prompts, completions, meta=None, **kwargs):
        return [1.0 if "please" in c else 0.0 for c in completions]

Functions come only from the project's own modules (a file under the project directory, which the stage then tracks
as a code dependency): a module from site-packages or the standard library is refused. What a function returns is
checked row by row: a wrong length, a non-number or a non-finite value is an error naming the function and the row,
never a silent zero.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignloop.core.files import DataError

AGGREGATES = ("weighted_sum", "maxmin")
_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_EXAMPLE = "alignloop.core.reward_functions:length_window"


class RewardFunctionError(DataError):
    """A reward function that cannot be loaded, or that failed or returned something unusable: ``str()`` names the
    function (and the row) and the fix."""


# --- loading ----------------------------------------------------------------------------------------------------


def module_file(module: str) -> str:
    """The file a reward function's module must be, relative to the project (what the stage tracks in DVC)."""
    return module.replace(".", "/") + ".py"


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def load_reward_function(spec: str, root: str | Path) -> Callable:
    """The callable ``module:function``, imported from the project's own modules only: the module must be the file
    ``<root>/<module path>.py`` (``root``: the project directory, the stage's working directory). The module's
    location is checked before it is imported, so a module outside the project never runs."""
    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise RewardFunctionError(f"reward function {spec!r} is not 'module:function' (fix: e.g. {_EXAMPLE})")
    module, name = spec.split(":")
    root = _real(root)
    expected = root / module_file(module)
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a parent package is missing
        found = None
    except Exception as exc:  # importing a parent package failed
        raise RewardFunctionError(f"reward function {spec!r}: importing the package of module '{module}' raised "
                                  f"{type(exc).__name__}: {exc} (fix: correct that package)") from exc
    if found is None:
        raise RewardFunctionError(f"reward function {spec!r}: no module '{module}' can be imported (fix: correct the "
                                  f"module name, or put the function in {module_file(module)} under the project "
                                  f"{root})")
    origin = found.origin if found.has_location else None
    if origin is None or not _real(origin).is_relative_to(root):
        where = f"at {origin}" if origin else f"part of Python ({found.origin or 'a namespace package'})"
        raise RewardFunctionError(
            f"reward function {spec!r}: module '{module}' is {where}, outside the project {root}; reward functions "
            f"come only from the project's own modules (fix: define the function in a module file under the "
            f"project, e.g. my_rewards.py, and name it my_rewards:{name})")
    if _real(origin) != expected:
        raise RewardFunctionError(
            f"reward function {spec!r}: module '{module}' is {_real(origin).relative_to(root)}, not the module file "
            f"{module_file(module)} the stage tracks as its code (fix: define the function in a plain module file, "
            f"e.g. {module_file(module + '.rewards')}, and name it {module}.rewards:{name})")
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        raise RewardFunctionError(f"reward function {spec!r}: importing {module_file(module)} raised "
                                  f"{type(exc).__name__}: {exc} (fix: correct the module)") from exc
    if not hasattr(mod, name):
        defined = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == module)
        raise RewardFunctionError(f"reward function {spec!r}: module '{module}' has no attribute '{name}' (fix: one "
                                  f"of the functions it defines: {defined}, or correct the name)")
    fn = getattr(mod, name)
    if not callable(fn):
        raise RewardFunctionError(f"reward function {spec!r}: '{name}' in module '{module}' is a "
                                  f"{type(fn).__name__}, not a function (fix: name a function f(prompts, "
                                  "completions, meta=None, **kwargs) -> list of floats)")
    return fn


def check_reward_function_source(spec: str, root: str | Path) -> None:
    """Check ``module:function`` against the project's files without importing anything (``alignloop render``'s
    check, in a process whose own imports may not be the project's): the module file ``<root>/<module path>.py``
    exists, parses, and defines ``function`` at its top level. The stage's import (load_reward_function) still
    checks the rest when it runs."""
    import ast

    if not isinstance(spec, str) or not _SPEC.fullmatch(spec):
        raise RewardFunctionError(f"reward function {spec!r} is not 'module:function' (fix: e.g. {_EXAMPLE})")
    module, name = spec.split(":")
    path = Path(root) / module_file(module)
    if not path.is_file():
        raise RewardFunctionError(f"reward function {spec!r}: no file {module_file(module)} in the project {root}; "
                                  f"reward functions come only from the project's own modules (fix: correct the module "
                                  f"name, or define the function in {module_file(module)})")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise RewardFunctionError(f"reward function {spec!r}: {module_file(module)} does not parse: {exc} (fix: "
                                  "correct the module)") from None
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    if name not in defined:
        functions = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_"))
        raise RewardFunctionError(f"reward function {spec!r}: {module_file(module)} defines no '{name}' (fix: one of "
                                  f"its functions: {functions}, or correct the name)")


# --- calling ----------------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """A completion as text: a string as it is; TRL's conversational form (a list of ``{role, content}`` message
    dicts, e.g. ``[{"role": "assistant", "content": "..."}]``) as its messages' contents joined by newlines."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        return "\n".join(completion_text(m) for m in completion)
    return str(completion)


def _short(x: Any, limit: int = 60) -> str:
    text = completion_text(x) if isinstance(x, (list, tuple, dict)) else str(x)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def call_reward_function(fn: Callable, label: str, prompts: Sequence, completions: Sequence,
                         meta: Sequence[dict] | None = None) -> list[float]:
    """``fn(prompts, completions, meta=meta)`` checked: one finite number per completion, as floats. Every failure is
    a RewardFunctionError naming the function (``label``) and, for a bad value, the row."""
    n = len(completions)
    meta = [{} for _ in range(n)] if meta is None else [dict(m) for m in meta]
    try:
        out = fn(list(prompts), list(completions), meta=meta)
    except Exception as exc:
        raise RewardFunctionError(f"reward function {label} raised {type(exc).__name__}: {exc} (fix: correct the "
                                  f"function; it is called as f(prompts, completions, meta=[...]) on {n} "
                                  "completions)") from exc
    if hasattr(out, "tolist") and not isinstance(out, (list, tuple)):  # a numpy array or a tensor
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise RewardFunctionError(f"reward function {label} returned a {type(out).__name__}, expected a list of {n} "
                                  "floats, one per completion (fix: return a list)")
    if len(out) != n:
        raise RewardFunctionError(f"reward function {label} returned {len(out)} values for {n} completions "
                                  f"(expected {n}, got {len(out)}; fix: return one float per completion)")
    values = []
    for i, v in enumerate(out):
        number = isinstance(v, numbers.Real) and not isinstance(v, bool)
        try:
            x = float(v) if number else math.nan
        except (OverflowError, ValueError):
            x = math.nan
        if not math.isfinite(x):
            raise RewardFunctionError(
                f"reward function {label} returned {v!r} ({'not finite' if number else 'not a number'}) for row {i} "
                f"(prompt {_short(prompts[i])}, response {_short(completions[i])}) (fix: return a finite float for "
                "every completion; a missing value has no default)")
        values.append(x)
    return values


# --- combining --------------------------------------------------------------------------------------------------


def zscore(xs: Sequence[float]) -> list[float]:
    """(x - mean) / std with the population std; a constant column (every value equal) gives all zeros."""
    if not xs:
        return []
    if max(xs) == min(xs):
        return [0.0] * len(xs)
    m = sum(xs) / len(xs)
    std = math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
    return [(x - m) / std for x in xs]


def combine(columns: Sequence[Sequence[float]], weights: Sequence[float], aggregate: str = "weighted_sum") -> list[float]:
    """One reward per row from the source columns (``columns[s][i]``: source s's value for row i).

    weighted_sum: sum over sources of w_s * x_s, summed from the first source on, so one source at weight 1.0
    gives exactly its own values (1.0 * x == x, -0.0 included).
    maxmin (MaxMin-RLHF): min over sources of w_s * zscore(x_s)_i, the worst normalised source; the z-scores are over
    the rows given, so the rows must be the whole batch the reward is meant for.
    """
    if not columns:
        raise ValueError("combine needs at least one source column")
    if len(weights) != len(columns):
        raise ValueError(f"{len(columns)} source columns but {len(weights)} weights")
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"source columns of different lengths: {[len(c) for c in columns]}")
    if aggregate == "weighted_sum":
        out = [weights[0] * x for x in columns[0]]
        for col, w in zip(columns[1:], weights[1:]):
            out = [o + w * x for o, x in zip(out, col)]
        return out
    if aggregate == "maxmin":
        scaled = [[w * z for z in zscore(col)] for col, w in zip(columns, weights)]
        return [min(vals) for vals in zip(*scaled)]
    raise ValueError(f"unknown reward aggregate {aggregate!r} (fix: one of {list(AGGREGATES)})")
