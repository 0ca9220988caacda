"""Reading and writing the pipeline's files: JSON Lines with row validation, atomic outputs.

Every reader reports bad rows as ``file:line: what is wrong (fix: ...)`` so a user can find the row.
Every writer writes into a temporary sibling and renames it into place, so a killed stage never
leaves a half-written file or directory that a later stage would take as complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A bad input file or row. ``str()`` names the file, the line and the fix."""


@dataclass(frozen=True)
class BadRow:
    file: str
    line: int
    raw: str
    error: str

    def as_quarantine(self) -> dict:
        return {"file": self.file, "line": self.line, "error": self.error, "raw": self.raw}

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.error}"


# --- row validators: each returns an error message or None -------------------------------------

Validator = Callable[[dict], "str | None"]


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value
        )
    )


def _text_field(row: dict, key: str, *, allow_messages: bool = False) -> str | None:
    if key not in row:
        return f"missing field '{key}' (fix: add a non-empty '{key}' to this row)"
    value = row[key]
    if isinstance(value, str):
        if not value.strip():
            return f"field '{key}' is an empty string (fix: give it text or remove the row)"
        return None
    if allow_messages and _is_messages(value):
        return None
    kind = "a string or a list of {role, content} messages" if allow_messages else "a string"
    return f"field '{key}' must be {kind}, got {type(value).__name__} (fix: correct the value)"


def _id_field(row: dict, key: str = "id") -> str | None:
    if key not in row:
        return f"missing field '{key}' (fix: give every row a unique '{key}')"
    if not isinstance(row[key], (str, int)) or isinstance(row[key], bool):
        return f"field '{key}' must be a string or integer, got {type(row[key]).__name__} (fix: correct the value)"
    return None


def validate_prompt(row: dict) -> str | None:
    return _id_field(row) or _text_field(row, "prompt", allow_messages=True)


def validate_sft(row: dict) -> str | None:
    return _id_field(row) or _text_field(row, "prompt", allow_messages=True) or _text_field(row, "response")


def validate_pair(row: dict) -> str | None:
    err = (
        _id_field(row)
        or _text_field(row, "prompt", allow_messages=True)
        or _text_field(row, "chosen")
        or _text_field(row, "rejected")
    )
    if err:
        return err
    if row["chosen"].strip() == row["rejected"].strip():
        return "'chosen' equals 'rejected': the pair carries no preference (fix: drop the row)"
    return None


def validate_sample(row: dict) -> str | None:
    for key, typ in (("prompt_id", (str, int)), ("sample_idx", int), ("response", str), ("num_tokens", int)):
        if key not in row:
            return f"missing field '{key}' (fix: regenerate this file with the generate stage)"
        if not isinstance(row[key], typ) or isinstance(row[key], bool):
            return f"field '{key}' has type {type(row[key]).__name__} (fix: regenerate this file)"
    return None


def validate_score(row: dict) -> str | None:
    for key, typ in (("prompt_id", (str, int)), ("sample_idx", int), ("reward", (int, float))):
        if key not in row:
            return f"missing field '{key}' (fix: regenerate this file with the score stage)"
        if not isinstance(row[key], typ) or isinstance(row[key], bool):
            return f"field '{key}' has type {type(row[key]).__name__} (fix: regenerate this file)"
    return None


# --- reading ----------------------------------------------------------------------------------


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, str, dict | None, str | None]]:
    """Yield ``(line_no, raw, row, error)`` for every non-blank line; never raises on bad content."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (fix: run the stage that produces it, e.g. `dvc repro`)")
    with open(path, "rb") as fh:
        for line_no, raw_bytes in enumerate(fh, start=1):
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line_no, raw_bytes.decode("utf-8", "replace").rstrip("\n"), None, (
                    f"not valid UTF-8 at byte {exc.start} (fix: re-encode the file as UTF-8)"
                )
                continue
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield line_no, raw.rstrip("\n"), None, f"invalid JSON: {exc.msg} at column {exc.colno} (fix: one JSON object per line)"
                continue
            if not isinstance(row, dict):
                yield line_no, raw.rstrip("\n"), None, f"expected a JSON object, got {type(row).__name__} (fix: one JSON object per line)"
                continue
            yield line_no, raw.rstrip("\n"), row, None


SAMPLE_KEY = ("prompt_id", "sample_idx")  # what identifies a row of samples and scores files


def split_rows(path: str | Path, validate: Validator, *, id_key: str | tuple[str, ...] | None = "id"
               ) -> tuple[list[dict], list[BadRow]]:
    """Read a JSONL file into (good rows, bad rows). Rows repeating an earlier row's ``id_key`` (a field, or a
    tuple of fields such as SAMPLE_KEY) are bad rows."""
    good: list[dict] = []
    bad: list[BadRow] = []
    seen: dict[Any, int] = {}
    for line_no, raw, row, err in iter_jsonl(path):
        if err is None:
            err = validate(row)
        if err is None and id_key is not None:
            key = row[id_key] if isinstance(id_key, str) else tuple(row[k] for k in id_key)
            if key in seen:
                name = id_key if isinstance(id_key, str) else "/".join(id_key)
                err = f"duplicate {name} {key!r} (first at line {seen[key]}) (fix: give every row a unique {name})"
            else:
                seen[key] = line_no
        if err is None:
            good.append(row)
        else:
            bad.append(BadRow(str(path), line_no, raw, err))
    return good, bad


def read_jsonl(path: str | Path, validate: Validator | None = None, *, id_key: str | tuple[str, ...] | None = None,
               allow_empty: bool = False) -> list[dict]:
    """Read a JSONL file that a stage depends on; any bad row is an error listing every bad line."""
    good, bad = split_rows(path, validate or (lambda row: None), id_key=id_key)
    if bad:
        shown = "\n".join(f"  {b}" for b in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(f"{path}: {len(bad)} bad row(s):\n{shown}{more}")
    if not good and not allow_empty:
        raise DataError(f"{path}: the file has no rows (fix: check the stage that produced it, or the input data)")
    return good


def line_numbers(path: str | Path, id_key: str = "id") -> dict[Any, int]:
    """The line of each row's ``id_key`` in a (valid) JSONL file, for errors about rows found after reading."""
    return {row[id_key]: line for line, _, row, err in iter_jsonl(path) if err is None and id_key in row}


# --- atomic writing ---------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it replaces ``final`` in one rename.

    On any exception the temporary directory is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``final`` and rename it into place when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (fix: run the stage that produces it, e.g. `dvc repro`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}) (fix: rerun the stage that produces it)") from None


def hash_paths(paths: list[Path], h) -> None:
    """Feed every file under ``paths`` (names and bytes, sorted) into the hashlib object ``h``."""
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
