"""Edit params.yaml the way a flow run asks: set keys, add rounds — keeping the file's comments and order.

The Prefect flows call this instead of carrying settings of their own, so everything a run used is in
params.yaml and a later ``dvc repro`` reproduces it exactly. The new text is validated in full before it
replaces the file (atomically); a bad override leaves params.yaml as it was.
"""

from __future__ import annotations

import io as _io
import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from alignloop.core.config import ConfigError, Params, load_params
from alignloop.core.files import atomic_file

_ROUND_NUMBER = re.compile(r"^r(\d+)$")


def _yaml() -> YAML:
    y = YAML()  # round-trip: comments, key order and flow-style maps survive
    y.preserve_quotes = True
    y.width = 120
    # ruamel writes None as an empty value by default: every `key: null` the run did not touch would change.
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def set_key(doc: CommentedMap, dotted: str, value: Any) -> bool:
    """Set ``a.b.c`` in ``doc``, creating missing mappings; True when the value changed."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"override '{dotted}': empty key segment (fix: write keys like 'dpo.beta')")
    node = doc
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = CommentedMap()
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"override '{dotted}': '{where}' is a value, not a section (fix: check the key path)")
        node = child
    last = parts[-1]
    if last in node and _same(node[last], value):
        return False
    node[last] = value
    return True


def _same(old: Any, new: Any) -> bool:
    """Equal values of the same kind (ruamel's ScalarFloat 0.3 is 0.3; True is not 1)."""
    return old == new and isinstance(old, bool) == isinstance(new, bool) and isinstance(old, str) == isinstance(new, str)


def next_round_name(existing: list[str]) -> str:
    numbers = [int(m.group(1)) for m in map(_ROUND_NUMBER.match, existing) if m]
    n = max(numbers, default=0) + 1
    while f"r{n}" in existing:
        n += 1
    return f"r{n}"


def new_rounds(names: list[str], last_algo: str, total: int) -> list[tuple[str, str, str]]:
    """``(name, algo, prev)`` of the rounds a run asking for ``total`` rounds appends after ``names``: each repeats
    the last round's algorithm (``last_algo``) and starts from the round before it (the first from SFT)."""
    names, out = list(names), []
    while len(names) < total:
        name = next_round_name(names)
        out.append((name, last_algo, names[-1] if names else "sft"))
        names.append(name)
    return out


def extend_rounds(doc: CommentedMap, total: int) -> list[str]:
    """Append rounds until there are ``total``; each new round repeats the last one's algorithm and starts
    from it. Returns the names added. Rounds are never removed here: a smaller ``total`` is an error, because
    deleting a finished round's params would orphan its outputs."""
    rounds = doc.get("rounds")
    if rounds is None:
        rounds = doc["rounds"] = CommentedMap()
    names = list(rounds)
    if total < len(names):
        raise ConfigError(
            f"params.yaml has {len(names)} rounds ({', '.join(names)}) and the run asked for {total} "
            "(fix: ask for at least that many, or remove rounds from params.yaml by hand and run `alignloop render`)"
        )
    last_algo = (rounds[names[-1]] or {}).get("algo", "dpo") if names else "dpo"
    added = new_rounds(names, last_algo, total)
    for name, algo, prev in added:
        rounds[name] = CommentedMap([("algo", algo), ("prev", prev)])
    return [name for name, _, _ in added]


def edit_params(path: str | Path, *, rounds: int | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Apply ``overrides`` (dotted keys) and extend to ``rounds`` rounds; write params.yaml only if it changed.

    Returns ``{"changed": [...keys], "added_rounds": [...], "params": Params}``. Raises ConfigError, listing
    every problem of the resulting file, without touching it.
    """
    path = Path(path)
    y = _yaml()
    text = path.read_text(encoding="utf-8")
    doc = y.load(text) or CommentedMap()
    # Rounds first: an override may set a round this run adds (rounds.r4.dpo.lr with rounds=4).
    added = extend_rounds(doc, rounds) if rounds is not None else []
    changed = [k for k, v in (overrides or {}).items() if set_key(doc, k, v)]
    if not changed and not added:
        return {"changed": [], "added_rounds": [], "params": load_params(path)}
    buf = _io.StringIO()
    y.dump(doc, buf)
    new_text = buf.getvalue()
    # Validate the edited file under its own name (so line numbers point into it), then swap it in.
    candidate = path.with_name(f".{path.name}.candidate")
    candidate.write_text(new_text, encoding="utf-8")
    try:
        params: Params = load_params(candidate)
    except ConfigError as exc:
        raise ConfigError(f"{exc}".replace(str(candidate), f"{path} (with the run's overrides)")) from None
    finally:
        candidate.unlink(missing_ok=True)
    with atomic_file(path) as fh:
        fh.write(new_text)
    return {"changed": changed + [f"rounds.{n}" for n in added], "added_rounds": added, "params": params}


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys of its leaves (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``). An empty mapping is a
    leaf, so a preset can clear one (e.g. ``registry.gate.min: {}``); lists are leaves."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def read_preset(preset: str | Path) -> dict[str, Any]:
    """A preset file (a partial params.yaml, e.g. configs/gpu-small.yaml) as dotted-key overrides."""
    import yaml

    preset = Path(preset)
    if not preset.is_file():
        raise ConfigError(f"{preset}: no such preset (fix: one of {sorted(str(p) for p in Path('configs').glob('*.yaml'))})")
    raw = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{preset}: a preset is a mapping of params sections (fix: see configs/gpu-small.yaml)")
    return flatten(raw)


def apply_preset(path: str | Path, preset: str | Path) -> dict:
    """Merge ``preset`` over params.yaml at ``path`` key by key (comments kept; keys it leaves out unchanged), after
    validating the result as a whole. Returns :func:`edit_params`'s result."""
    return edit_params(path, overrides=read_preset(preset))
