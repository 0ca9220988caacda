"""JSONL reading with file:line errors, and atomic writers that never leave half-written outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignloop.core.files import (
    BadRow,
    DataError,
    atomic_dir,
    atomic_file,
    read_json,
    read_jsonl,
    split_rows,
    validate_pair,
    validate_sample,
    validate_score,
    validate_sft,
    write_json,
    write_jsonl,
)


def pair(id_, chosen="good reply", rejected="bad reply", prompt="tell me about ocean") -> str:
    return json.dumps({"id": id_, "prompt": prompt, "chosen": chosen, "rejected": rejected})


# line : content
#  1   : good (id a)
#  2   : blank
#  3   : invalid JSON
#  4   : a JSON list, not an object
#  5   : not UTF-8 (byte 0xff at offset 8)
#  6   : missing 'rejected'
#  7   : prompt has the wrong type (int)
#  8   : chosen is whitespace only
#  9   : duplicate id 'a' (first at line 1)
# 10   : chosen == rejected (after strip)
# 11   : good (id f)
# 12   : whitespace-only line
# 13   : good (id g), no trailing newline
LINES = [
    pair("a").encode(),
    b"",
    b"{not json",
    b"[1, 2]",
    b'{"id": "\xff"}',
    json.dumps({"id": "b", "prompt": "p", "chosen": "x"}).encode(),
    json.dumps({"id": "c", "prompt": 5, "chosen": "x", "rejected": "y"}).encode(),
    pair("d", chosen="   ").encode(),
    pair("a", chosen="other", rejected="pair").encode(),
    pair("e", chosen="same", rejected=" same ").encode(),
    pair("f").encode(),
    b"   \t",
]
LAST = pair("g").encode()


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(LINES) + b"\n" + LAST)
    return path


def test_split_rows_reports_every_bad_line(messy: Path):
    good, bad = split_rows(messy, validate_pair)
    assert [r["id"] for r in good] == ["a", "f", "g"]
    assert [b.line for b in bad] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert all(b.file == str(messy) for b in bad)
    errors = {b.line: b.error for b in bad}
    assert errors[3].startswith("invalid JSON") and "column 2" in errors[3]
    assert errors[4].startswith("expected a JSON object, got list")
    assert errors[5].startswith("not valid UTF-8 at byte 8")
    assert errors[6].startswith("missing field 'rejected'")
    assert errors[7].startswith("field 'prompt' must be a string or a list of {role, content} messages, got int")
    assert errors[8].startswith("field 'chosen' is an empty string")
    assert errors[9].startswith("duplicate id 'a' (first at line 1)")
    assert errors[10].startswith("'chosen' equals 'rejected'")
    assert all("(fix:" in e for e in errors.values())


def test_bad_row_str_and_quarantine(messy: Path):
    _, bad = split_rows(messy, validate_pair)
    first = bad[0]
    assert str(first) == f"{messy}:3: {first.error}"
    assert first.raw == "{not json"
    assert first.as_quarantine() == {"file": str(messy), "line": 3, "error": first.error, "raw": "{not json"}
    assert "\ufffd" in bad[2].raw  # the undecodable byte is replaced, the rest kept


def test_read_jsonl_raises_listing_file_and_lines(messy: Path):
    with pytest.raises(DataError) as info:
        read_jsonl(messy, validate_pair, id_key="id")
    msg = str(info.value)
    assert msg.startswith(f"{messy}: 8 bad row(s):")
    for line in (3, 4, 5, 6, 7, 8, 9, 10):
        assert f"{messy}:{line}: " in msg
    for line in (1, 2, 11, 12, 13):
        assert f"{messy}:{line}: " not in msg


def test_read_jsonl_without_id_key_allows_duplicates(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    path.write_text(pair("a") + "\n" + pair("a", chosen="x", rejected="y") + "\n", encoding="utf-8")
    assert len(read_jsonl(path, validate_pair)) == 2
    with pytest.raises(DataError, match=r":2: duplicate id 'a' \(first at line 1\)"):
        read_jsonl(path, validate_pair, id_key="id")


def test_blank_lines_skipped_line_numbers_kept(tmp_path: Path):
    path = tmp_path / "sft.jsonl"
    path.write_text("\n\n" + json.dumps({"id": 1, "prompt": "p", "response": "r"}) + "\n\n  \n"
                    + json.dumps({"id": 2, "prompt": "p"}) + "\n\n", encoding="utf-8")
    good, bad = split_rows(path, validate_sft)
    assert [r["id"] for r in good] == [1]
    assert [(b.line, b.error.split(" (")[0]) for b in bad] == [(6, "missing field 'response'")]


def test_read_jsonl_empty_file_names_the_file(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl: the file has no rows"):
        read_jsonl(empty)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"blank\.jsonl: the file has no rows"):
        read_jsonl(blank)
    assert read_jsonl(empty, allow_empty=True) == []


def test_read_jsonl_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_validators_for_samples_and_scores():
    ok_sample = {"prompt_id": "p0", "sample_idx": 0, "response": "hi", "num_tokens": 1}
    assert validate_sample(ok_sample) is None
    assert validate_sample({**ok_sample, "sample_idx": "0"}).startswith("field 'sample_idx' has type str")
    assert validate_sample({**ok_sample, "num_tokens": True}).startswith("field 'num_tokens' has type bool")
    assert validate_sample({k: v for k, v in ok_sample.items() if k != "response"}).startswith("missing field 'response'")
    ok_score = {"prompt_id": 3, "sample_idx": 1, "reward": 2}
    assert validate_score(ok_score) is None
    assert validate_score({**ok_score, "reward": 0.5}) is None
    assert validate_score({**ok_score, "reward": True}).startswith("field 'reward' has type bool")
    assert validate_score({**ok_score, "reward": "1.0"}).startswith("field 'reward' has type str")


def test_pair_validator_types():
    msgs = [{"role": "user", "content": "hi"}]
    assert validate_pair({"id": 1, "prompt": msgs, "chosen": "a", "rejected": "b"}) is None
    assert validate_pair({"id": True, "prompt": "p", "chosen": "a", "rejected": "b"}).startswith("field 'id' must be")
    assert validate_pair({"prompt": "p", "chosen": "a", "rejected": "b"}).startswith("missing field 'id'")
    # chosen may not be a message list (only the prompt may)
    assert validate_pair({"id": 1, "prompt": "p", "chosen": msgs, "rejected": "b"}).startswith("field 'chosen' must be a string")
    assert validate_pair({"id": 1, "prompt": [], "chosen": "a", "rejected": "b"}).startswith("field 'prompt' must be")


def test_many_bad_rows_are_truncated(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text("[]\n" * 25, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    msg = str(info.value)
    assert "25 bad row(s)" in msg and f"{path}:20: " in msg and f"{path}:21: " not in msg
    assert "... and 5 more" in msg


# --- atomic writers ---------------------------------------------------------------------------------


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_atomic_dir_replaces_on_success(tmp_path: Path):
    target = tmp_path / "out" / "model"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # untouched until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert (target / "new.txt").read_text() == "new"
    assert leftovers(target.parent, "model") == []


def test_atomic_dir_creates_new_target(tmp_path: Path):
    target = tmp_path / "a" / "b" / "policy"
    with atomic_dir(target) as tmp:
        (tmp / "w.bin").write_bytes(b"\x00\x01")
    assert (target / "w.bin").read_bytes() == b"\x00\x01"
    assert leftovers(target.parent, "policy") == []


def test_atomic_dir_failure_keeps_previous_content(tmp_path: Path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert leftovers(tmp_path, "model") == []


def test_atomic_dir_failure_without_previous_target(tmp_path: Path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_success_and_failure(tmp_path: Path):
    target = tmp_path / "sub" / "metrics.json"
    with atomic_file(target) as fh:
        fh.write("first")
    assert target.read_text() == "first"
    with pytest.raises(ValueError):
        with atomic_file(target) as fh:
            fh.write("second, half written")
            raise ValueError("boom")
    assert target.read_text() == "first"
    assert leftovers(target.parent, "metrics.json") == []
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_atomic_file_binary(tmp_path: Path):
    target = tmp_path / "x.bin"
    with atomic_file(target, "wb") as fh:
        fh.write(b"\xff\x00")
    assert target.read_bytes() == b"\xff\x00"


def test_write_jsonl_roundtrip_and_count(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    rows = [{"id": "a", "text": "café ☕"}, {"id": "b", "n": 2}]
    assert write_jsonl(path, rows) == 2
    assert read_jsonl(path) == rows
    assert "café ☕" in path.read_text(encoding="utf-8")  # UTF-8, not \\u escapes
    assert write_jsonl(tmp_path / "none.jsonl", []) == 0
    assert (tmp_path / "none.jsonl").read_text() == ""


def test_write_jsonl_failure_keeps_previous_file(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"id": 1}])

    def rows():
        yield {"id": 2}
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert read_jsonl(path) == [{"id": 1}]
    assert leftovers(tmp_path, "rows.jsonl") == []
    # an unserialisable row fails too, and leaves the old file
    with pytest.raises(TypeError):
        write_jsonl(path, [{"id": 3}, {"bad": object()}])
    assert read_jsonl(path) == [{"id": 1}]
    assert leftovers(tmp_path, "rows.jsonl") == []


def test_write_and_read_json(tmp_path: Path):
    path = tmp_path / "m.json"
    write_json(path, {"b": 1, "a": [1.5]})
    assert path.read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    assert read_json(path) == {"a": [1.5], "b": 1}
    path.write_text("{oops")
    with pytest.raises(DataError, match=r"m\.json: not valid JSON"):
        read_json(path)
    with pytest.raises(DataError, match="file not found"):
        read_json(tmp_path / "missing.json")


def test_badrow_is_frozen():
    row = BadRow("f.jsonl", 1, "raw", "err")
    with pytest.raises(Exception):
        row.line = 2  # type: ignore[misc]
