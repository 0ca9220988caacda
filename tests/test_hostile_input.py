"""Hostile input (issue 17): every malformed source file gets `file:line: what is wrong (fix: ...)` or a quarantine
record with a count, never a traceback, and nothing is silently reinterpreted.

A table of named cases goes through the curate stage (data.source jsonl) as a user would run it; then a seeded
fuzzer drives thousands of byte-mutated rows through curate and through every pipeline-file reader, and random
`datasets`-style rows (nulls, lists of dicts, nested features) through every adapter, asserting that every row is
kept, quarantined with a reason, or reported, and that the counts add up to the input.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from alignloop.core import files
from alignloop.core.adapters import ADAPTERS
from alignloop.pipeline.stages import curate as stage

REPO = Path(__file__).resolve().parents[1]
GOOD = [{"id": f"a{i}", "prompt": p, "chosen": f"good words {i}", "rejected": f"bad {i}"}
        for i, p in enumerate(["tell me about ocean", "talk about music", "tell me about space", "write a note on books",
                               "describe city in a few words", "share a thought on coffee"])]


def _line(row: dict) -> bytes:
    return (json.dumps(row) + "\n").encode()


def _good_bytes() -> bytes:
    return b"".join(_line(r) for r in GOOD)


@pytest.fixture
def workdir(tmp_path, monkeypatch, tracking):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "experiment: test-hostile\nseed: 1\ndata: {source: jsonl, path: in.jsonl, adapter: pairs}\n"
        "curate: {eval_fraction: 0.3}\n", encoding="utf-8")
    return tmp_path


def _curate(capsys) -> tuple[int, str, dict | None, list[dict]]:
    """Run the stage; (exit code, stderr, metrics or None, quarantine records)."""
    try:
        rc = stage.main([])
    except BaseException as exc:  # noqa: BLE001 - the point: no exception may escape the stage
        pytest.fail(f"curate raised {type(exc).__name__}: {exc}")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    out = Path("data/curated")
    if rc != 0:
        return rc, err, None, []
    metrics = json.loads((out / "metrics.json").read_text())
    quarantine = files.read_jsonl(out / "quarantine.jsonl", allow_empty=True)
    for name in ("prefs/train.jsonl", "prefs/eval.jsonl", "sft.jsonl"):  # what was written reads back clean
        files.read_jsonl(out / name, allow_empty=True)
    m = metrics
    assert m["kept_rows"] + m["quarantined"] + m["duplicates_removed"] + m["too_long_dropped"] + \
        m["too_short_dropped"] == m["input_rows"]
    assert m["quarantined"] == len(quarantine)
    return rc, err, metrics, quarantine


# --- the table: one malformed source row among good ones -> quarantined at its line, with a reason ---------------

DEEP = b'{"id": "d", "prompt": "p", "chosen": ' + b"[" * 50_000 + b"]" * 50_000 + b', "rejected": "r"}\n'
ROW_CASES = {
    "nested 50,000 levels deep": (DEEP, "nested more than 64 levels deep"),
    "nested 65 levels (under the parser's limit, over ours)": (
        b'{"id": "d", "prompt": "p", "chosen": "c", "rejected": "r", "meta": ' + b"[" * 65 + b"]" * 65 + b"}\n",
        "nested more than 64 levels deep in field 'meta"),
    "lone surrogate escape": (b'{"id": "s", "prompt": "p \\ud800", "chosen": "c", "rejected": "r"}\n',
                              "'\\ud800', a lone surrogate"),
    "duplicate key": (b'{"id": "k", "prompt": "p", "chosen": "c", "chosen": "d", "rejected": "r"}\n',
                      "key 'chosen' appears twice"),
    "non-numeric chosen_score": (_line({"id": "n", "prompt": "p", "chosen": "c", "rejected": "r",
                                        "chosen_score": "high"}), "field 'chosen_score' is 'high', not a finite number"),
    "infinite score (1e999)": (b'{"id": "i", "prompt": "p", "chosen": "c", "rejected": "r", "score_chosen": 1e999}\n',
                               "non-finite number inf in field 'score_chosen'"),
    "NaN score": (b'{"id": "i", "prompt": "p", "chosen": "c", "rejected": "r", "chosen_score": NaN}\n',
                  "NaN is not valid JSON"),
    "boolean score": (_line({"id": "b", "prompt": "p", "chosen": "c", "rejected": "r", "rejected_score": True}),
                      "field 'rejected_score' is True, not a finite number"),
    "integer of 5000 digits": (b'{"id": "g", "prompt": "p", "chosen": "c", "rejected": "r", "x": 1' + b"0" * 5000
                               + b"}\n", "numbers of ordinary size"),
    "non-string source": (_line({"id": "o", "prompt": "p", "chosen": "c", "rejected": "r", "source": 7}),
                          "field 'source' is 7, not a non-empty string"),
    "NUL byte outside a string": (b'{"id": "z", "prompt": "p",\x00 "chosen": "c", "rejected": "r"}\n', "invalid JSON"),
    "Latin-1 byte": (b'{"id": "l", "prompt": "caf\xe9", "chosen": "c", "rejected": "r"}\n', "not valid UTF-8 at byte 26"),
    "CESU-8 encoded surrogate": (b'{"id": "c", "prompt": "\xed\xa0\x80", "chosen": "c", "rejected": "r"}\n',
                                 "not valid UTF-8"),
}


@pytest.mark.parametrize("case", ROW_CASES, ids=list(ROW_CASES))
def test_a_malformed_row_is_quarantined_at_its_line_with_the_reason(workdir, capsys, case):
    bad, expected = ROW_CASES[case]
    (workdir / "in.jsonl").write_bytes(_line(GOOD[0]) + _line(GOOD[1]) + bad + b"".join(_line(r) for r in GOOD[2:]))
    rc, err, m, q = _curate(capsys)
    assert rc == 0, err
    assert len(q) == 1 and q[0]["file"] == "in.jsonl" and q[0]["line"] == 3, q
    assert expected in q[0]["error"] and "(fix:" in q[0]["error"], q[0]["error"]
    assert m["input_rows"] == len(GOOD) + 1 and m["pref_train_rows"] + m["pref_eval_rows"] == len(GOOD)
    assert "in.jsonl:3:" in err  # the warning names the line too


def test_an_oversized_line_is_quarantined_without_reading_it_whole(workdir, capsys, monkeypatch):
    monkeypatch.setattr(files, "MAX_LINE_BYTES", 4096)  # the real bound is 32 MiB; the logic is the same
    monkeypatch.setattr(files, "RAW_SHOWN", 100)
    huge = _line({"id": "h", "prompt": "p", "chosen": "x" * 3_000_000, "rejected": "r"})
    (workdir / "in.jsonl").write_bytes(_line(GOOD[0]) + huge + b"".join(_line(r) for r in GOOD[1:]))
    rc, err, m, q = _curate(capsys)
    assert rc == 0 and [(r["line"], len(r["raw"])) for r in q] == [(2, 103)]  # 100 characters + "..."
    assert f"line is {len(huge)} bytes, over the 4096-byte limit" in q[0]["error"]
    assert m["input_rows"] == len(GOOD) + 1 and m["kept_rows"] == len(GOOD)  # the rows after it were read


# --- files that are fine once read properly: nothing quarantined, nothing lost ---------------------------------

def _zstd_magic(data: bytes) -> bytes:
    return b"\x28\xb5\x2f\xfd" + data


READABLE = {
    "UTF-8 byte-order mark": lambda b: b"\xef\xbb\xbf" + b,
    "CRLF line endings": lambda b: b.replace(b"\n", b"\r\n"),
    "blank and whitespace lines": lambda b: b"\n  \n" + b.replace(b"\n", b"\n\t\n"),
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize("case", READABLE, ids=list(READABLE))
def test_files_that_only_look_odd_keep_every_row(workdir, capsys, case):
    (workdir / "in.jsonl").write_bytes(READABLE[case](_good_bytes()))
    rc, err, m, q = _curate(capsys)
    assert rc == 0, err
    assert q == [] and m["input_rows"] == m["kept_rows"] == len(GOOD)
    got = files.read_jsonl("data/curated/prefs/train.jsonl") + files.read_jsonl("data/curated/prefs/eval.jsonl")
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in GOOD)  # the first row too (the BOM case)


# --- whole-file problems: exit 2 with the file and the fix, nothing written --------------------------------------

FILE_CASES = {
    "a directory": (lambda w: (w / "in.jsonl").mkdir(), "in.jsonl: is a directory, not a JSONL file (fix:"),
    "a missing file": (lambda w: None, "in.jsonl: file not found (fix: set data.path"),
    "a dangling symlink": (lambda w: (w / "in.jsonl").symlink_to(w / "gone.jsonl"), "in.jsonl: file not found"),
    "a named pipe": (lambda w: os.mkfifo(w / "in.jsonl"), "in.jsonl: not a regular file"),
    "UTF-16 with its byte-order mark": (lambda w: (w / "in.jsonl").write_bytes(_good_bytes().decode().encode("utf-16")),
                                        "in.jsonl: is UTF-16 text (fix: re-encode it as UTF-8"),
    "zstd": (lambda w: (w / "in.jsonl").write_bytes(_zstd_magic(_good_bytes())), "is zstd-compressed, which this "
             "reader does not decompress (fix: `zstd -d in.jsonl`"),
    "truncated gzip": (lambda w: (w / "in.jsonl").write_bytes(gzip.compress(_good_bytes() * 50)[:300]),
                       "in.jsonl: gzip data is corrupt or truncated after line"),
    "corrupt xz": (lambda w: (w / "in.jsonl").write_bytes(lzma.compress(_good_bytes())[:12] + b"\x00" * 64),
                   "in.jsonl: xz data is corrupt or truncated"),
}


@pytest.mark.parametrize("case", FILE_CASES, ids=list(FILE_CASES))
def test_a_bad_file_stops_curate_with_the_file_and_the_fix(workdir, capsys, case):
    make, expected = FILE_CASES[case]
    make(workdir)
    rc, err, _, _ = _curate(capsys)
    assert rc == 2 and err.startswith("error: ") and expected in err, err
    assert not Path("data/curated").exists()


def test_an_unreadable_file_is_reported_as_permission_denied(tmp_path):
    """As root, chmod cannot stop a read, so the reader runs as user 'nobody' in a child process (stdlib only:
    alignloop.core.files imports nothing else)."""
    d = Path(tempfile.mkdtemp(prefix="alignloop-perm-"))
    try:
        d.chmod(0o755)
        f = d / "in.jsonl"
        f.write_bytes(_good_bytes())
        f.chmod(0o000)
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from alignloop.core.files import DataError, read_jsonl\n"
                "try:\n    read_jsonl(sys.argv[2])\nexcept DataError as e:\n    print(e)\n")
        root = os.geteuid() == 0
        python = shutil.which("python3", path="/usr/bin:/bin") if root else sys.executable
        out = subprocess.run([python, "-c", code, str(REPO), str(f)], capture_output=True, text=True, timeout=60,
                             **({"user": "nobody"} if root else {}))
        assert out.returncode == 0 and out.stderr == "", out.stderr
        assert out.stdout.strip() == f"{f}: cannot be read: permission denied (fix: `chmod a+r {f}`, or run as its owner)"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_file_that_changes_while_read_is_an_error(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_bytes(_good_bytes())
    rows = files.iter_jsonl(f)
    next(rows)
    with open(f, "ab") as fh:  # a writer appends while the reader is half way
        fh.write(_line({"id": "late", "prompt": "p", "chosen": "c", "rejected": "r"}))
    with pytest.raises(files.DataError, match="in.jsonl: changed while it was being read \\(fix: rerun once"):
        list(rows)


# --- the fuzzer ------------------------------------------------------------------------------------------------

PALETTE = [b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b"\n", b"\r", b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80",
           b"\xef\xbb\xbf", b"NaN", b"Infinity", b"1e999", b"-", b"\\ud800", b"\\u0000", b" "]


def mutate(line: bytes, rng: random.Random) -> bytes:
    """One seeded mutation of a valid JSONL line (without its newline): byte-level edits and structural attacks."""
    kind = rng.randrange(10)
    i = rng.randrange(len(line) + 1)
    if kind == 0:
        return line[:i] + bytes([rng.randrange(256)]) + line[i + 1:]
    if kind == 1:
        return line[:i] + line[i + 1:]
    if kind == 2:
        return line[:i] + rng.choice(PALETTE) + line[i:]
    if kind == 3:
        return line[:i]  # truncated
    if kind == 4:  # a key twice
        return line[:-1] + b', "' + rng.choice([b"id", b"prompt", b"chosen", b"rejected"]) + b'": "again"}'
    if kind == 5:  # a value deeply nested
        depth = rng.choice([63, 64, 65, 2000, 100_000])
        return line[:-1] + b', "meta": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == 6:  # an optional field with a hostile value
        field = rng.choice([b"chosen_score", b"rejected_score", b"score_chosen", b"source", b"meta", b"id"])
        value = rng.choice([b"NaN", b"1e999", b'"x"', b"true", b"null", b"[]", b"{}", b"-0", b"1" * 5000, b'""'])
        return line[:-1] + b', "' + field + b'": ' + value + b"}"
    if kind == 7:  # several edits at once
        for _ in range(rng.randrange(2, 6)):
            line = mutate(line, rng)
        return line
    if kind == 8:  # a string that is not text
        return line.replace(b'"good', b'"\\udc80good', 1)
    return line  # unchanged: most real rows are fine


def _fuzz_lines(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    base = [json.dumps({"id": f"r{i}", "prompt": f"prompt {i % 97}", "chosen": f"good answer {i}",
                        "rejected": f"bad {i}", "chosen_score": 0.5}).encode() for i in range(n)]
    return [mutate(line, rng) for line in base]


def _expected_rows(data: bytes) -> int:
    """Non-blank lines, by the reader's definition (a line that is not UTF-8 is a row, a bad one)."""
    n = 0
    for raw in data.split(b"\n"):
        try:
            n += bool(raw.decode("utf-8").strip())
        except UnicodeDecodeError:
            n += 1
    return n


def test_fuzzed_rows_through_curate(workdir, capsys):
    data = b"\n".join(_fuzz_lines(3000, seed=17)) + b"\n"
    (workdir / "in.jsonl").write_bytes(data)
    rc, err, m, q = _curate(capsys)
    assert rc == 0, err
    assert m["input_rows"] == _expected_rows(data)
    assert 500 < m["quarantined"] < m["input_rows"] - 500  # the mutations did bite, and many rows survived
    assert all(r["file"] == "in.jsonl" and "(fix:" in r["error"] for r in q)
    assert len({r["line"] for r in q}) == len(q)
    reasons = {r["error"].split(" (fix:")[0].split(":")[0][:24] for r in q}
    assert len(reasons) >= 8, reasons  # many kinds of damage were met, each with its own message


READERS = {  # (validator, id_key, a valid row) of every pipeline file a stage reads
    "prompts": (files.validate_prompt, "id", {"id": "p1", "prompt": "tell me about ocean"}),
    "sft": (files.validate_sft, "id", {"id": "s1", "prompt": "hi", "response": "hello there"}),
    "prefs": (files.validate_pair, "id", {"id": "q1", "prompt": "hi", "chosen": "good", "rejected": "bad"}),
    "samples": (files.validate_sample, files.SAMPLE_KEY,
                {"prompt_id": "p1", "sample_idx": 0, "response": "waves", "num_tokens": 3}),
    "scores": (files.validate_score, files.SAMPLE_KEY, {"prompt_id": "p1", "sample_idx": 0, "reward": 0.25}),
}


@pytest.mark.parametrize("kind", READERS)
def test_fuzzed_rows_through_every_pipeline_file_reader(tmp_path, kind):
    validate, id_key, row = READERS[kind]
    rng = random.Random(kind)
    lines = []
    for i in range(1500):
        r = dict(row)
        if isinstance(id_key, str):
            r[id_key] = f"{r[id_key]}-{i}"
        else:
            r["sample_idx"] = i
        lines.append(mutate(json.dumps(r).encode(), rng))
    data = b"\n".join(lines) + b"\n"
    f = tmp_path / f"{kind}.jsonl"
    f.write_bytes(data)
    good, bad = files.split_rows(f, validate, id_key=id_key)
    assert len(good) + len(bad) == _expected_rows(data) and good and bad
    assert all("(fix:" in b.error and b.file == str(f) for b in bad)
    files.write_jsonl(tmp_path / "back.jsonl", good)  # every kept row can be written back as UTF-8
    assert len(files.read_jsonl(tmp_path / "back.jsonl", validate, id_key=id_key)) == len(good)
    with pytest.raises(files.DataError) as info:  # the strict reader stages use: an error listing the bad lines
        files.read_jsonl(f, validate, id_key=id_key)
    assert f"{f}: {len(bad)} bad row(s):" in str(info.value) and f"{f}:{bad[0].line}: " in str(info.value)


def _random_value(rng: random.Random, depth: int = 0):
    """A value a `datasets` column can hold: null, numbers (NaN/inf from float columns), text, lists, structs,
    lists of structs such as chat messages."""
    kind = rng.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([0, -3, 2**40, 0.5, float("nan"), float("inf"), True])
    if kind in (2, 3, 4):
        return rng.choice(["", " ", "hello", "\n\nHuman: hi\n\nAssistant: hey", "Human: x", "\x00", "é" * 3])
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6:
        return [{"role": rng.choice(["user", "assistant", "system", None, 3]),
                 "content": _random_value(rng, depth + 1)} for _ in range(rng.randrange(4))]
    if kind == 7:
        return {rng.choice(["role", "content", "text", "value"]): _random_value(rng, depth + 1)
                for _ in range(rng.randrange(3))}
    return rng.choice([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                       "\n\nHuman: hi\n\nAssistant: good answer"])


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_fuzzed_hub_rows_through_every_adapter(adapter):
    rng = random.Random(adapter)
    keys = ["prompt", "chosen", "rejected", "messages", "id", "source", "chosen_score", "score_rejected", "meta"]
    rows = [{k: _random_value(rng) for k in rng.sample(keys, rng.randrange(2, len(keys)))} for _ in range(2000)]
    rows += [{"prompt": "hi", "chosen": "good", "rejected": "bad"}] * 3  # some rows are fine (and then duplicates)
    good, bad = stage.adapt_rows((stage._hub_item(i + 1, r) for i, r in enumerate(rows)), "hub:fuzz", adapter,
                                 "hub:fuzz")
    assert len(good) + len(bad) == len(rows)
    assert all("(fix:" in b.error for b in bad), [b.error for b in bad if "(fix:" not in b.error][:3]
    for g in good:  # what is kept is a valid pair that can be written as UTF-8 JSON
        assert files.validate_pair(g) is None and files.value_problem(g) is None
        json.dumps(g, ensure_ascii=False).encode("utf-8")


def test_a_hub_dataset_with_nulls_nan_and_nested_features(workdir, capsys):
    """data.source hub: a parquet shard in the hub layout loaded by `datasets`, whose typed columns hold nulls, a NaN
    score (float columns can) and nested structs; bad rows are quarantined with their row number, none is lost."""
    import datasets

    d = workdir / "ds" / "data"
    d.mkdir(parents=True)
    u = lambda t: [{"role": "user", "content": t}]  # noqa: E731
    rows = [{"prompt": u(r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"], "chosen_score": 1.0,
             "meta": {"annotator": {"name": "a", "ids": [1, 2]}}} for r in GOOD]
    rows[1]["chosen"] = None  # a null in a string column
    rows[2]["chosen_score"] = float("nan")
    rows[3]["prompt"] = [{"role": "user", "content": None}]  # a null inside a list of structs
    rows[4]["chosen_score"] = None  # a null optional score: the row has no score, and is kept
    datasets.Dataset.from_list(rows).to_parquet(str(d / "train-00000-of-00001.parquet"))
    (workdir / "params.yaml").write_text("experiment: test-hostile\nseed: 1\ndata: {source: hub, path: ds, adapter: "
                                         "pairs}\ncurate: {eval_fraction: 0.3}\n", encoding="utf-8")
    rc, err, m, q = _curate(capsys)
    assert rc == 0, err
    assert [(r["file"], r["line"]) for r in q] == [("ds", 2), ("ds", 3), ("ds", 4)]
    assert "'chosen'" in q[0]["error"] and "non-finite number nan in field 'chosen_score'" in q[1]["error"]
    assert "content" in q[2]["error"] and all("(fix:" in r["error"] for r in q)
    assert m["input_rows"] == len(GOOD) and m["kept_rows"] == len(GOOD) - 3
    kept = files.read_jsonl("data/curated/prefs/train.jsonl", allow_empty=True) + \
        files.read_jsonl("data/curated/prefs/eval.jsonl", allow_empty=True)
    assert {r["chosen"]: r.get("chosen_score") for r in kept} == {"good words 0": 1.0, "good words 4": None,
                                                                  "good words 5": 1.0}
