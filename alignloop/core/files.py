"""Reading and writing the pipeline's files: JSON Lines with row validation, atomic outputs.

Every reader reports bad rows as ``file:line: what is wrong (fix: ...)`` so a user can find the row.
Every writer writes into a temporary sibling and renames it into place, so a killed stage never
leaves a half-written file or directory that a later stage would take as complete.
"""

from __future__ import annotations

import bz2
import contextlib
import glob
import gzip
import hashlib
import json
import lzma
import math
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import zlib
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


def _meta_field(row: dict) -> str | None:
    if row.get("meta") is None or isinstance(row["meta"], dict):
        return None
    return f"field 'meta' must be an object, got {type(row['meta']).__name__} (fix: correct it, or remove it)"


def validate_prompt(row: dict) -> str | None:
    return _id_field(row) or _text_field(row, "prompt", allow_messages=True) or _meta_field(row)


def validate_prompt_text(row: dict) -> str | None:
    """A prompt row that needs no id (ids are assigned by content), e.g. curate.extra_eval_prompts."""
    return _text_field(row, "prompt", allow_messages=True)


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


def validate_ranking(row: dict) -> str | None:
    """A rankings.jsonl row (the pairs stage's listwise output, lipo's input)."""
    err = _id_field(row, "prompt_id") or _text_field(row, "prompt", allow_messages=True)
    if err:
        return err
    resp = row.get("responses")
    if not isinstance(resp, list) or not resp:
        return "field 'responses' must be a non-empty list (fix: regenerate this file with the pairs stage)"
    for i, x in enumerate(resp):
        if not isinstance(x, dict) or not isinstance(x.get("response"), str) or \
                not isinstance(x.get("reward"), (int, float)) or isinstance(x.get("reward"), bool):
            return (f"responses[{i}] needs a string 'response' and a numeric 'reward' (fix: regenerate this file with "
                    "the pairs stage)")
    return None


def validate_score(row: dict) -> str | None:
    for key, typ in (("prompt_id", (str, int)), ("sample_idx", int), ("reward", (int, float))):
        if key not in row:
            return f"missing field '{key}' (fix: regenerate this file with the score stage)"
        if not isinstance(row[key], typ) or isinstance(row[key], bool):
            return f"field '{key}' has type {type(row[key]).__name__} (fix: regenerate this file)"
    return None


# --- reading ----------------------------------------------------------------------------------


# Bounds on one row: far above any real row, low enough that a hostile line cannot exhaust memory or the stack.
MAX_LINE_BYTES = 32 * 2**20
MAX_DEPTH = 64
RAW_SHOWN = 2000  # characters of an oversized line kept in the quarantine record

# Compressed files are recognised by their first bytes, whatever their name.
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))


class _BadJSON(ValueError):
    """Raised from the JSON hooks: the message is the row's error."""


def _no_constant(name: str):
    raise _BadJSON(f"{name} is not valid JSON (fix: write a finite number, or null)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    row: dict = {}
    for k, v in pairs:
        if k in row:
            raise _BadJSON(f"key {k!r} appears twice in one object (fix: keep one of them; JSON readers disagree on "
                           "which one wins)")
        row[k] = v
    return row


def value_problem(value: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """Why a parsed value cannot be a row (nested deeper than ``max_depth``; a string no UTF-8 file can hold, such as
    a lone surrogate from an escape like ``\\ud800``; a non-finite float), or None. Iterative: never recurses."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        x, depth, where = stack.pop()
        name = where.lstrip(".")
        at = f" in field '{name if len(name) <= 60 else name[:60] + '...'}'" if name else ""
        if depth > max_depth:
            return f"nested more than {max_depth} levels deep{at} (fix: flatten the row)"
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError as exc:
                return (f"the string{at} holds {ascii(x[exc.start])}, a lone surrogate no UTF-8 file can hold "
                        "(fix: remove it, or encode the text properly before escaping it)")
        elif isinstance(x, float) and not math.isfinite(x):  # 1e999 parses as inf
            return f"non-finite number {x}{at} (fix: write a finite number, or null)"
        elif isinstance(x, dict):
            for k, v in x.items():
                stack.append((k, depth + 1, where))
                stack.append((v, depth + 1, f"{where}.{k}"))
        elif isinstance(x, (list, tuple)):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(x))
    return None


def parse_row(raw: str) -> tuple[dict | None, str | None]:
    """One line of JSONL as ``(row, None)`` or ``(None, error)``; never raises on bad content."""
    try:
        row = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _BadJSON as exc:
        return None, str(exc)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno} (fix: one JSON object per line)"
    except RecursionError:
        return None, f"nested more than {MAX_DEPTH} levels deep (fix: flatten the row)"
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit limit
        return None, f"invalid JSON: {exc} (fix: one JSON object per line, numbers of ordinary size)"
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__} (fix: one JSON object per line)"
    problem = value_problem(row)
    return (None, problem) if problem else (row, None)


def check_readable(path: str | Path, fix_missing: str = "run the stage that produces it, e.g. `dvc repro`") -> Path:
    """``path`` if it is a regular file this process can read; else DataError saying which of those it is not."""
    path = Path(path)
    if path.is_dir():
        return _raise(f"{path}: is a directory, not a JSONL file (fix: point at a .jsonl file inside it)")
    if not path.exists():
        return _raise(f"{path}: file not found (fix: {fix_missing})")
    if not path.is_file():
        return _raise(f"{path}: not a regular file (a device, socket or pipe) (fix: point at a .jsonl file)")
    if not os.access(path, os.R_OK):
        return _raise(f"{path}: cannot be read: permission denied (fix: `chmod a+r {path}`, or run as its owner)")
    return path


def _raise(msg: str):
    raise DataError(msg)


def _open_binary(path: Path):
    """The file's bytes, decompressed when it is gzip, bzip2 or xz (the stdlib reads those); zstd is refused."""
    try:
        fh = open(path, "rb")
    except PermissionError:
        _raise(f"{path}: cannot be read: permission denied (fix: `chmod a+r {path}`, or run as its owner)")
    except OSError as exc:
        _raise(f"{path}: cannot be read: {exc.strerror} (fix: check the file)")
    head = fh.read(6)
    fh.seek(0)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        fh.close()
        _raise(f"{path}: is UTF-16 text (fix: re-encode it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 {path}`)")
    for magic, kind in _COMPRESSED:
        if head.startswith(magic):
            if kind == "zstd":
                fh.close()
                _raise(f"{path}: is zstd-compressed, which this reader does not decompress (fix: `zstd -d {path}`, "
                       "or recompress it with gzip, bzip2 or xz)")
            return {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}[kind](fh, "rb"), kind
    return fh, None


def _lines(fh) -> Iterator[tuple[bytes, int]]:
    """``(line, its full length in bytes)``; a line over MAX_LINE_BYTES is cut there (the rest is skipped unread)."""
    while True:
        chunk = fh.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        n = len(chunk)
        if n > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while True:  # skip to the end of the line, 1 MiB at a time
                rest = fh.readline(1 << 20)
                n += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
        yield chunk, n


def iter_jsonl(path: str | Path, fix_missing: str = "run the stage that produces it, e.g. `dvc repro`"
               ) -> Iterator[tuple[int, str, dict | None, str | None]]:
    """Yield ``(line_no, raw, row, error)`` for every non-blank line; never raises on bad content.

    The one reading path of every JSONL file the project reads (sources and pipeline files). A row error is one of:
    not UTF-8, invalid JSON, not an object, NaN/Infinity, a key twice in one object, a lone surrogate, nesting over
    MAX_DEPTH, a line over MAX_LINE_BYTES. A UTF-8 byte-order mark is skipped; gzip/bzip2/xz files are read
    decompressed. DataError (not a row error) for a missing, unreadable or directory path, a UTF-16 file, a zstd or
    corrupt compressed file, and a file that changed while it was read.
    """
    path = check_readable(path, fix_missing)
    before = path.stat()
    fh, kind = _open_binary(path)
    line_no = 0
    try:
        with fh:
            for raw_bytes, size in _lines(fh):
                line_no += 1
                if line_no == 1 and raw_bytes.startswith(b"\xef\xbb\xbf"):
                    raw_bytes = raw_bytes[3:]  # a byte-order mark: Windows editors write one; it is not part of a row
                if size > MAX_LINE_BYTES:
                    shown = raw_bytes[:RAW_SHOWN].decode("utf-8", "replace")
                    yield line_no, shown + "...", None, (
                        f"line is {size} bytes, over the {MAX_LINE_BYTES}-byte limit (fix: shorten or split the row)")
                    continue
                try:
                    raw = raw_bytes.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    yield line_no, raw_bytes.decode("utf-8", "replace").rstrip("\r\n"), None, (
                        f"not valid UTF-8 at byte {exc.start} (fix: re-encode the file as UTF-8)"
                    )
                    continue
                if not raw.strip():
                    continue
                row, err = parse_row(raw)
                yield line_no, raw, row, err
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:  # a truncated or corrupt compressed stream
        _raise(f"{path}: {kind or 'file'} data is corrupt or truncated after line {line_no} ({exc}) (fix: recreate "
               "or re-download the file)")
    after = path.stat()
    if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
        _raise(f"{path}: changed while it was being read (fix: rerun once whatever writes it has finished)")


SAMPLE_KEY = ("prompt_id", "sample_idx")  # what identifies a row of samples and scores files


def split_rows(path: str | Path, validate: Validator, *, id_key: str | tuple[str, ...] | None = "id",
               fix_missing: str = "run the stage that produces it, e.g. `dvc repro`"
               ) -> tuple[list[dict], list[BadRow]]:
    """Read a JSONL file into (good rows, bad rows). Rows repeating an earlier row's ``id_key`` (a field, or a
    tuple of fields such as SAMPLE_KEY) are bad rows. ``fix_missing``: the fix a missing file's error gives."""
    good: list[dict] = []
    bad: list[BadRow] = []
    seen: dict[Any, int] = {}
    for line_no, raw, row, err in iter_jsonl(path, fix_missing):
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

FAILPOINT_ENV = "ALIGNLOOP_FAILPOINT"


def failpoint(path: str | Path) -> None:
    """Fault injection for the crash tests: where ``ALIGNLOOP_FAILPOINT`` is set and ``path`` ends with its value, the
    process SIGKILLs itself here, in the middle of writing that output. Stages that run for a fraction of a second
    (curate, pairs, register, report on a test project) leave no window a timed kill could hit without racing the
    stage's end; this lands in the same place every time. Unset (the normal case) it is one environment lookup."""
    want = os.environ.get(FAILPOINT_ENV)
    if want and Path(path).as_posix().endswith(want):
        print(f"failpoint {want}: SIGKILL while writing {path}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (for files and runs a killed process left behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _clean_stale(final: Path) -> None:
    """Remove the temporary siblings a killed writer of ``final`` left (``.<name>.tmp-<pid>-*``, ``.<name>.old-<pid>``)
    when their process is gone: SIGKILL skips the clean-up below, and a killed stage rerun many times would otherwise
    pile up copies of a model beside its output. A live writer's files are left alone."""
    for p in final.parent.glob(f".{glob.escape(final.name)}.*-*"):
        kind, _, rest = p.name[len(final.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it replaces ``final`` in one rename.

    On any exception the temporary directory is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        failpoint(final)  # everything written, nothing published
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
    _clean_stale(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent)
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
            if n == 1:  # one row on disk, the rest to come
                fh.flush()
                failpoint(path)
    return n


def write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    with atomic_file(path) as fh:
        fh.write(text[: len(text) // 2])  # half on disk, the rest to come (the failpoint's place)
        fh.flush()
        failpoint(path)
        fh.write(text[len(text) // 2:])


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (fix: run the stage that produces it, e.g. `dvc repro`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}) (fix: rerun the stage that produces it)") from None


# Bytes and files file_md5 has read in this process: tests and bench/scale_round.py count hash passes with it.
HASHED = {"files": 0, "bytes": 0}


def _md5_db(cache: str | Path) -> sqlite3.Connection:
    Path(cache).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(cache), timeout=60)
    db.execute("CREATE TABLE IF NOT EXISTS md5 (path TEXT PRIMARY KEY, size INT, mtime_ns INT, ino INT, md5 TEXT)")
    return db


def file_md5(path: str | Path, cache: str | Path | None = None) -> str:
    """md5 of a file's bytes (what DVC records for it). With ``cache`` (a sqlite file, created when missing) the
    result is remembered by absolute path, size, mtime and inode — as DVC's own state database remembers its hashes —
    so a multi-GB weight file that several stages, fingerprints and the registry ask about is read once, not once per
    asker. A file that changes while it is read is not remembered."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    db = None
    if cache is not None:
        try:
            db = _md5_db(cache)
            row = db.execute("SELECT md5 FROM md5 WHERE path = ? AND size = ? AND mtime_ns = ? AND ino = ?", key).fetchone()
        except sqlite3.DatabaseError:  # a damaged cache only costs a re-hash
            if db is not None:
                db.close()
            db, row = None, None
        if row:
            db.close()
            return row[0]
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            HASHED["bytes"] += len(chunk)
    HASHED["files"] += 1
    md5 = h.hexdigest()
    if db is not None:
        try:
            after = path.stat()
            if (after.st_size, after.st_mtime_ns, after.st_ino) == key[1:]:
                with db:
                    db.execute("INSERT OR REPLACE INTO md5 VALUES (?, ?, ?, ?, ?)", (*key, md5))
        except sqlite3.DatabaseError:
            pass
        finally:
            db.close()
    return md5


def remember_md5(path: str | Path, md5: str, cache: str | Path) -> None:
    """Record a file's md5 known from elsewhere (DVC's cache, whose entry the file is a link to) in ``cache``."""
    path = Path(path)
    st = path.stat()
    try:
        db = _md5_db(cache)
    except sqlite3.DatabaseError:
        return
    try:
        with db:
            db.execute("INSERT OR REPLACE INTO md5 VALUES (?, ?, ?, ?, ?)",
                       (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, md5))
    except sqlite3.DatabaseError:
        pass
    finally:
        db.close()


def hash_paths(paths: list[Path], h, cache: str | Path | None = None) -> None:
    """Feed every file under ``paths`` (its name and its md5, sorted) into the hashlib object ``h``; the md5s come
    from ``cache`` where a file is unchanged since it was last hashed (file_md5)."""
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            h.update(file_md5(f, cache).encode())
