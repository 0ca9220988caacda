"""Curation: dedup, split, length filters, metrics; and the curate stage end to end on bad inputs.

With seed 1 and eval_fraction 0.3 the four prompts below split as: eval = {BOOKS}, train = the rest
(eval_score: ocean 0.365, space 0.529, music 0.814, books 0.037). The split tests pin this, since a change
of the hash would silently move prompts between train and eval.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from alignloop.core.config import CurateConfig
from alignloop.core.curate import (
    curate,
    eval_score,
    exact_dedup,
    filter_lengths,
    filter_prompt_length,
    filter_response_length,
    split_prompts,
    stable_id,
)
from alignloop.pipeline.stages import curate as stage

OCEAN, SPACE, MUSIC, BOOKS = "tell me about ocean", "tell me about space", "talk about music", "write a note on books"
SEED, FRACTION = 1, 0.3


# --- pure functions ---------------------------------------------------------------------------------


def test_exact_dedup_keeps_first_in_order():
    rows = [{"k": 1, "i": 0}, {"k": 2, "i": 1}, {"k": 1, "i": 2}, {"k": 3, "i": 3}, {"k": 2, "i": 4}]
    kept, dups = exact_dedup(rows, lambda r: r["k"])
    assert [r["i"] for r in kept] == [0, 1, 3]
    assert [r["i"] for r in dups] == [2, 4]
    assert exact_dedup([], lambda r: r) == ([], [])


def test_split_pinned_values():
    assert split_prompts([OCEAN, SPACE, MUSIC, BOOKS], FRACTION, SEED) == ([OCEAN, SPACE, MUSIC], [BOOKS])
    assert round(eval_score(BOOKS, SEED), 3) == 0.037


def test_split_deterministic_disjoint_and_stable_when_prompts_are_added():
    keys = [f"prompt {i}" for i in range(200)]
    train, ev = split_prompts(keys, 0.2, seed=7)
    assert (train, ev) == split_prompts(keys, 0.2, seed=7)
    assert not set(train) & set(ev)
    assert set(train) | set(ev) == set(keys)
    assert 20 <= len(ev) <= 60  # ~40 expected
    assert all((eval_score(k, 7) < 0.2) == (k in ev) for k in keys)
    # Adding prompts (and reordering) never moves existing ones.
    more = [f"prompt {i}" for i in range(500)][::-1]
    train2, ev2 = split_prompts(more, 0.2, seed=7)
    assert set(ev2) & set(keys) == set(ev)
    assert set(train2) & set(keys) == set(train)
    # Another seed gives another split.
    assert split_prompts(keys, 0.2, seed=8)[1] != ev


def test_split_guarantees_both_sides_and_dedups_keys():
    assert split_prompts(["a", "b"], 1e-9, 0)[1] != []
    assert split_prompts(["a", "b"], 0.999999, 0)[0] != []
    train, ev = split_prompts(["a", "b", "a", "b"], 1e-9, 0)
    assert len(train) == 1 and len(ev) == 1
    assert split_prompts(["only"], 0.5, 0)[1] in ([], ["only"])
    assert split_prompts([], 0.5, 0) == ([], [])


def test_length_filters():
    rows = [
        {"prompt": "abc", "chosen": "xx", "rejected": "yyy"},
        {"prompt": "abcdef", "chosen": "xx", "rejected": "yyy"},  # prompt too long (6 > 5)
        {"prompt": [{"role": "user", "content": "ab"}, {"role": "user", "content": "cd"}], "chosen": " x ", "rejected": "yy"},
        {"prompt": "a", "chosen": "xxxxx", "rejected": "yy"},  # chosen too long (5 > 4)
    ]
    kept, dropped = filter_prompt_length(rows, 5)
    assert kept == [rows[0], rows[2], rows[3]]
    assert [(d.row, d.kind) for d in dropped] == [(rows[1], "too_long")]
    assert "prompt has 6 chars > max_prompt_chars 5" in dropped[0].reason
    kept, dropped = filter_response_length(rows, ("chosen", "rejected"), 2, 4)
    assert kept == [rows[0], rows[1]]
    assert [(d.kind, d.reason) for d in dropped] == [
        ("too_short", "'chosen' has 1 chars < min_response_chars 2"),
        ("too_long", "'chosen' has 5 chars > max_response_chars 4"),
    ]
    cfg = CurateConfig(min_response_chars=2, max_response_chars=4, max_prompt_chars=5)
    kept, dropped = filter_lengths(rows, cfg, ("chosen", "rejected"))
    assert kept == [rows[0]]
    assert [d.kind for d in dropped] == ["too_long", "too_short", "too_long"]


def _hand_input():
    prompts = [
        {"id": "P1", "prompt": OCEAN}, {"id": "P2", "prompt": SPACE}, {"id": "P3", "prompt": MUSIC},
        {"id": "P4", "prompt": BOOKS}, {"id": "P5", "prompt": OCEAN},  # duplicate text
        {"id": "P6", "prompt": "x" * 40},  # too long
    ]
    sft = [
        {"id": "s1", "prompt": OCEAN, "response": "waves and tide"},
        {"id": "s2", "prompt": OCEAN, "response": "waves and tide"},  # duplicate
        {"id": "s3", "prompt": SPACE, "response": "y"},  # too short
        {"id": "s4", "prompt": MUSIC, "response": "z" * 21},  # too long
        {"id": "s5", "prompt": BOOKS, "response": "ink and pages"},  # eval prompt: removed
        {"id": "s6", "prompt": SPACE, "response": "stars"},
    ]
    pairs = [
        {"id": "q1", "prompt": OCEAN, "chosen": "blue waves", "rejected": "gloomy"},
        {"id": "q2", "prompt": OCEAN, "chosen": "blue waves", "rejected": "gloomy"},  # duplicate
        {"id": "q3", "prompt": BOOKS, "chosen": "good ink", "rejected": "bad"},  # eval
        {"id": "q4", "prompt": MUSIC, "chosen": "a" * 25, "rejected": "noise"},  # too long
        {"id": "q5", "prompt": SPACE, "chosen": "ok", "rejected": "x"},  # too short
        {"id": "q6", "prompt": SPACE, "chosen": "stars bright", "rejected": "dull"},
    ]
    cfg = CurateConfig(eval_fraction=FRACTION, min_response_chars=2, max_response_chars=20, max_prompt_chars=30)
    return prompts, sft, pairs, cfg


def test_curate_hand_made_counts():
    prompts, sft, pairs, cfg = _hand_input()
    res = curate(prompts, sft, pairs, cfg, SEED, quarantined={"prompts": 1, "sft": 2})
    assert [r["id"] for r in res.prompts_train] == ["P1", "P2", "P3"]
    assert [r["id"] for r in res.prompts_eval] == ["P4"]
    assert [r["id"] for r in res.sft] == ["s1", "s6"]
    assert [r["id"] for r in res.prefs_train] == ["q1", "q6"]
    assert [r["id"] for r in res.prefs_eval] == ["q3"]
    m = res.metrics
    assert {k: v for k, v in m.items() if k != "by_kind"} == {
        "input_rows": 21,  # 6+1 prompts, 6+2 sft, 6 pairs
        "quarantined": 3,
        "duplicates_removed": 3,
        "too_long_dropped": 3,
        "too_short_dropped": 2,
        "train_prompts": 3,
        "eval_prompts": 1,
        "sft_train_rows": 2,
        "pref_train_rows": 2,
        "pref_eval_rows": 1,
        "pref_judge_rows": 0,
        "eval_prompt_rows_removed_from_train": 1,
        "kept_rows": 9,
    }
    assert m["by_kind"]["sft"] == {
        "input": 8, "quarantined": 2, "duplicates": 1, "too_long": 1, "too_short": 1, "removed_eval_prompt": 1, "train": 2,
    }
    # Nothing lost.
    lost = m["quarantined"] + m["duplicates_removed"] + m["too_long_dropped"] + m["too_short_dropped"]
    assert m["kept_rows"] + lost + m["eval_prompt_rows_removed_from_train"] == m["input_rows"]


def test_curate_derives_prompts_and_sft_from_pairs():
    _, _, pairs, cfg = _hand_input()
    pairs.append({"id": "q7", "prompt": OCEAN, "chosen": "blue waves", "rejected": "grey"})  # same (prompt, chosen) as q1
    res = curate(None, None, pairs, cfg, SEED)
    assert [r["prompt"] for r in res.prompts_train] == [OCEAN, SPACE]  # music's only pair was too long
    assert [r["prompt"] for r in res.prompts_eval] == [BOOKS]
    assert res.prompts_train[0]["id"] == stable_id(OCEAN, prefix="p")
    assert [r["id"] for r in res.prefs_train] == ["q1", "q6", "q7"]
    assert res.sft == [
        {"id": "q1", "prompt": OCEAN, "response": "blue waves"},
        {"id": "q6", "prompt": SPACE, "response": "stars bright"},
    ]
    m = res.metrics
    assert (m["input_rows"], m["duplicates_removed"], m["kept_rows"], m["sft_train_rows"]) == (7, 1, 4, 2)
    assert m["by_kind"]["sft"] == {"derived_from": "prefs", "duplicates": 1, "train": 2}


def test_judge_split_is_a_further_hash_band_and_feeds_nothing_but_the_judge():
    """Prompts with eval_score in [eval_fraction, eval_fraction + judge_fraction) are the judge's: their pairs go to
    prefs_judge only; their SFT rows and prompts are in no training set."""
    keys = [f"prompt {i}" for i in range(300)]
    pairs = [{"id": f"q{i}", "prompt": k, "chosen": "good answer", "rejected": "bad"} for i, k in enumerate(keys)]
    sft = [{"id": f"s{i}", "prompt": k, "response": "good answer"} for i, k in enumerate(keys)]
    prompts = [{"id": f"p{i}", "prompt": k} for i, k in enumerate(keys)]
    cfg = CurateConfig(eval_fraction=0.2, judge_fraction=0.25)
    res = curate(prompts, sft, pairs, cfg, seed=3)
    judge = {r["prompt"] for r in res.prefs_judge}
    assert judge == {k for k in keys if 0.2 <= eval_score(k, 3) < 0.45} and 45 <= len(judge) <= 105
    train = {r["prompt"] for r in res.prompts_train}
    assert not judge & train and not judge & {r["prompt"] for r in res.prompts_eval}
    assert not judge & {r["prompt"] for r in res.prefs_train} and not judge & {r["prompt"] for r in res.sft}
    assert train | judge | {r["prompt"] for r in res.prompts_eval} == set(keys)  # every prompt in exactly one split
    m = res.metrics
    assert m["pref_judge_rows"] == len(res.prefs_judge) and m["by_kind"]["prompts"]["judge"] == len(judge)
    assert m["pref_train_rows"] + m["pref_eval_rows"] + m["pref_judge_rows"] == len(pairs)
    # The eval split does not move when a judge split is added: the judge takes its prompts from training only.
    plain = curate(prompts, sft, pairs, CurateConfig(eval_fraction=0.2), seed=3)
    assert plain.prompts_eval == res.prompts_eval and plain.prefs_judge == []
    assert {r["prompt"] for r in plain.prompts_train} == train | judge


def test_extra_eval_prompts_are_always_eval_and_pull_their_rows_out_of_training():
    """Hand-made: with seed 1 / fraction 0.3 only BOOKS is eval by hash. OCEAN listed as an extra eval prompt is eval
    too (its pair goes to prefs_eval, its SFT row leaves training); a new prompt is appended; a duplicate and a
    too-long one are counted."""
    prompts, sft, pairs, cfg = _hand_input()
    extra = [{"id": "x1", "prompt": OCEAN}, {"id": "x2", "prompt": "describe city in a few words"},
             {"id": "x3", "prompt": "describe city in a few words"}, {"id": "x4", "prompt": "y" * 40}]
    res = curate(prompts, sft, pairs, cfg, SEED, quarantined={"extra_eval": 2}, extra_eval=extra)
    assert [r["id"] for r in res.prompts_eval] == ["P1", "P4", "x2"]  # data prompts first, then the new extra one
    assert [r["id"] for r in res.prompts_train] == ["P2", "P3"]
    assert [r["id"] for r in res.prefs_eval] == ["q1", "q3"] and [r["id"] for r in res.prefs_train] == ["q6"]
    assert [r["id"] for r in res.sft] == ["s6"]  # s1 (OCEAN) left training with its prompt
    m = res.metrics
    assert m["by_kind"]["extra_eval"] == {"input": 6, "quarantined": 2, "duplicates": 1, "too_long": 1, "too_short": 0,
                                          "eval": 1, "already_in_data": 1}
    assert m["eval_prompts"] == 3 and m["eval_prompt_rows_removed_from_train"] == 2
    lost = m["quarantined"] + m["duplicates_removed"] + m["too_long_dropped"] + m["too_short_dropped"]
    assert m["kept_rows"] + lost + m["eval_prompt_rows_removed_from_train"] == m["input_rows"] == 18 + 6
    # Without extra prompts nothing changes (the same split as test_curate_hand_made_counts).
    assert [r["id"] for r in curate(prompts, sft, pairs, cfg, SEED).prompts_eval] == ["P4"]


def test_split_fractions_must_leave_training_data():
    with pytest.raises(ValueError, match="fix: lower one of them"):
        CurateConfig(eval_fraction=0.5, judge_fraction=0.4)


def test_curate_message_prompts_split_by_their_json_key():
    u = lambda t: [{"role": "user", "content": t}]  # noqa: E731
    pairs = [{"id": i, "prompt": u(p), "chosen": "good", "rejected": "bad"} for i, p in enumerate([OCEAN, SPACE, MUSIC, BOOKS] * 2)]
    pairs = [dict(p, chosen=f"good {p['id']}") for p in pairs]
    res = curate(None, None, pairs, CurateConfig(eval_fraction=0.5), 0)
    eval_keys = {json.dumps(r["prompt"]) for r in res.prompts_eval}
    assert eval_keys and len(res.prompts_train) + len(res.prompts_eval) == 4
    assert all(json.dumps(r["prompt"]) in eval_keys for r in res.prefs_eval)
    assert not any(json.dumps(r["prompt"]) in eval_keys for r in res.prefs_train + res.sft)


# --- the stage --------------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path, monkeypatch, tracking):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _params(path: Path, data: str, curate_cfg: str = "{eval_fraction: 0.3, min_response_chars: 2, max_response_chars: 40}") -> None:
    path.write_text(f"experiment: test-curate\nseed: {SEED}\ndata: {data}\ncurate: {curate_cfg}\n", encoding="utf-8")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _j(**row) -> bytes:
    return (json.dumps(row) + "\n").encode()


def test_stage_quarantines_bad_rows_and_keeps_good_ones(workdir, capsys):
    _params(workdir / "params.yaml", "{source: jsonl, path: in.jsonl, adapter: pairs}")
    lines = [
        _j(id="a1", prompt=OCEAN, chosen="blue waves", rejected="gloomy"),  # 1 good
        b'{"id": "a2", "prompt": "tell me about space", "chosen": \n',  # 2 invalid JSON
        _j(id="a3", prompt=SPACE, chosen=5, rejected="no"),  # 3 wrong type
        _j(id="a4", prompt=SPACE, chosen="stars"),  # 4 missing field
        _j(id="a5", prompt=SPACE, chosen="", rejected="dull"),  # 5 empty string
        b'{"id": "a6", "prompt": "caf\xe9", "chosen": "x1", "rejected": "y1"}\n',  # 6 not UTF-8
        _j(id="a1", prompt=MUSIC, chosen="melody", rejected="noise"),  # 7 duplicate id
        _j(id="a8", prompt=MUSIC, chosen="same", rejected=" same "),  # 8 chosen == rejected
        b"\n",  # 9 blank: not a row
        _j(id="a10", prompt=OCEAN, chosen="blue waves", rejected="gloomy"),  # 10 duplicate content
        _j(prompt=SPACE, chosen="bright stars", rejected="dull"),  # 11 good, no id
        _j(id="a12", prompt=BOOKS, chosen="ink and pages", rejected="bad"),  # 12 good, eval
        _j(id="a13", prompt=MUSIC, chosen="x" * 50, rejected="noise"),  # 13 too long
        _j(id="a14", prompt=MUSIC, chosen="a", rejected="noise"),  # 14 too short
        _j(id="a15", prompt=MUSIC, chosen="melody", rejected="noise"),  # 15 good
        b"[1, 2]\n",  # 16 not an object
    ]
    (workdir / "in.jsonl").write_bytes(b"".join(lines))
    assert stage.main([]) == 0
    out = workdir / "data" / "curated"
    q = _read(out / "quarantine.jsonl")
    assert [(r["file"], r["line"]) for r in q] == [("in.jsonl", n) for n in (2, 3, 4, 5, 6, 7, 8, 16)]
    errors = [r["error"] for r in q]
    for err, expected in zip(errors, [
        "invalid JSON", "field 'chosen' must be a string", "missing field 'rejected'", "field 'chosen' is empty",
        "not valid UTF-8", "duplicate id 'a1' (first at line 1)", "'chosen' equals 'rejected'", "expected a JSON object",
    ]):
        assert expected in err
    assert q[2]["raw"] == json.dumps({"id": "a4", "prompt": SPACE, "chosen": "stars"})

    m = json.loads((out / "metrics.json").read_text())
    assert (m["input_rows"], m["quarantined"], m["duplicates_removed"], m["too_long_dropped"], m["too_short_dropped"]) == (15, 8, 1, 1, 1)
    assert (m["pref_train_rows"], m["pref_eval_rows"], m["train_prompts"], m["eval_prompts"], m["sft_train_rows"]) == (3, 1, 3, 1, 3)
    assert m["kept_rows"] + m["quarantined"] + m["duplicates_removed"] + m["too_long_dropped"] + m["too_short_dropped"] == m["input_rows"]

    train, ev = _read(out / "prefs" / "train.jsonl"), _read(out / "prefs" / "eval.jsonl")
    assert [r["id"] for r in train] == ["a1", stable_id(SPACE, "bright stars", "dull"), "a15"]
    assert train[0] == {"id": "a1", "prompt": OCEAN, "chosen": "blue waves", "rejected": "gloomy", "source": "jsonl:in.jsonl"}
    assert [r["id"] for r in ev] == ["a12"]
    assert [r["prompt"] for r in _read(out / "prompts" / "eval.jsonl")] == [BOOKS]
    assert [r["prompt"] for r in _read(out / "prompts" / "train.jsonl")] == [OCEAN, SPACE, MUSIC]
    assert [(r["prompt"], r["response"]) for r in _read(out / "sft.jsonl")] == [
        (OCEAN, "blue waves"), (SPACE, "bright stars"), (MUSIC, "melody")
    ]
    captured = capsys.readouterr()
    assert captured.out.startswith("curate: 3 train / 1 eval prompts")
    assert "warning: 8 bad row(s) quarantined" in captured.err
    assert "in.jsonl:2: invalid JSON" in captured.err
    assert str(Path("data/curated/quarantine.jsonl")) in captured.err
    assert not list(out.parent.glob(".curated.tmp-*"))


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_stage_empty_input_exits_2_naming_the_file(workdir, capsys, content):
    _params(workdir / "params.yaml", "{source: jsonl, path: empty.jsonl, adapter: auto}")
    (workdir / "empty.jsonl").write_bytes(content)
    assert stage.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: empty.jsonl: the file has no rows")
    assert "Traceback" not in err
    assert not (workdir / "data" / "curated").exists()


def test_stage_missing_input_and_missing_path(workdir, capsys):
    _params(workdir / "params.yaml", "{source: jsonl, path: nope.jsonl}")
    assert stage.main([]) == 2
    assert "error: nope.jsonl: file not found (fix: set data.path" in capsys.readouterr().err
    _params(workdir / "params.yaml", "{source: jsonl}")
    assert stage.main([]) == 2
    assert "data.path is required" in capsys.readouterr().err
    (workdir / "params.yaml").write_text("data: {source: jsonl, pth: x}\n")
    assert stage.main([]) == 2
    assert "params.yaml:1: data.pth" in capsys.readouterr().err


def test_stage_all_rows_bad_exits_2_with_the_bad_lines(workdir, capsys):
    _params(workdir / "params.yaml", "{source: jsonl, path: in.jsonl, adapter: pairs}")
    (workdir / "in.jsonl").write_bytes(_j(prompt=OCEAN, chosen="a b") + b"not json\n")
    assert stage.main([]) == 2
    err = capsys.readouterr().err
    assert "0 valid distinct prompt(s) remain" in err
    assert "in.jsonl:1: missing field 'rejected'" in err and "in.jsonl:2: invalid JSON" in err


def test_stage_extra_eval_prompts_file(workdir, capsys):
    """curate.extra_eval_prompts: rows get content-hash ids (their own id kept as meta.source_id), a bad row is
    quarantined with file:line, the file is a DVC dependency, and a missing file is an error naming it."""
    from alignloop.pipeline.specs import Ctx

    cfg = "{eval_fraction: 0.3, min_response_chars: 2, max_response_chars: 40, extra_eval_prompts: extra.jsonl}"
    _params(workdir / "params.yaml", "{source: jsonl, path: in.jsonl, adapter: pairs}", cfg)
    (workdir / "in.jsonl").write_bytes(b"".join(_j(id=f"a{i}", prompt=p, chosen="good words", rejected="bad")
                                                for i, p in enumerate([OCEAN, SPACE, MUSIC, BOOKS])))
    assert stage.main([]) == 2
    err = capsys.readouterr().err
    assert "error: extra.jsonl: file not found (fix: set curate.extra_eval_prompts" in err and "Traceback" not in err
    (workdir / "extra.jsonl").write_bytes(_j(id="bench-7", prompt="say something about city") + _j(text="no prompt")
                                          + _j(prompt=[{"role": "user", "content": MUSIC}]))
    assert stage.main([]) == 0
    out = workdir / "data" / "curated"
    ev = _read(out / "prompts" / "eval.jsonl")
    assert [r["prompt"] for r in ev] == [BOOKS, "say something about city", [{"role": "user", "content": MUSIC}]]
    assert ev[1] == {"id": stable_id("say something about city", prefix="x"), "prompt": "say something about city",
                     "meta": {"source_id": "bench-7"}}
    assert [r["prompt"] for r in _read(out / "prompts" / "train.jsonl")] == [OCEAN, SPACE, MUSIC]  # a string != messages
    q = _read(out / "quarantine.jsonl")
    assert [(r["file"], r["line"]) for r in q] == [("extra.jsonl", 2)] and "missing field 'prompt'" in q[0]["error"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["by_kind"]["extra_eval"]["eval"] == 2 and m["quarantined"] == 1 and m["eval_prompts"] == 3
    from alignloop.core.config import load_params
    assert "extra.jsonl" in stage.SPECS[0].deps(Ctx(load_params("params.yaml")))


def test_stage_embedded_source(workdir, capsys):
    from alignloop.core.synthetic import make_corpus

    corpus = make_corpus(12, 2, 2, 0.5, 0.35, seed=0)
    raw = workdir / "data" / "raw"
    raw.mkdir(parents=True)
    for name, rows in corpus.items():
        (raw / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with open(raw / "sft.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "p00000-s0", "prompt": "dup id", "response": "x"}) + "\n")
    (workdir / "params.yaml").write_text("experiment: test-curate\ndata: {source: embedded}\n")
    assert stage.main(["--out", "cur"]) == 0
    out = workdir / "cur"
    q = _read(out / "quarantine.jsonl")
    assert [(r["file"], r["line"]) for r in q] == [(str(Path("data/raw/sft.jsonl")), len(corpus["sft"]) + 1)]
    assert "duplicate id 'p00000-s0'" in q[0]["error"]
    m = json.loads((out / "metrics.json").read_text())
    n_in = sum(len(v) for v in corpus.values()) + 1
    assert m["input_rows"] == n_in and m["quarantined"] == 1
    eval_prompts = {r["prompt"] for r in _read(out / "prompts" / "eval.jsonl")}
    train_prompts = {r["prompt"] for r in _read(out / "prompts" / "train.jsonl")}
    assert eval_prompts and train_prompts and not eval_prompts & train_prompts
    assert len(eval_prompts | train_prompts) == 12
    assert not eval_prompts & {r["prompt"] for r in _read(out / "sft.jsonl")}
    assert not eval_prompts & {r["prompt"] for r in _read(out / "prefs" / "train.jsonl")}
    assert {r["prompt"] for r in _read(out / "prefs" / "eval.jsonl")} <= eval_prompts
    assert all("meta" in r for r in _read(out / "prompts" / "train.jsonl"))
    assert m["sft_train_rows"] + m["eval_prompt_rows_removed_from_train"] == len(corpus["sft"])


def _hh(prefix: str, reply: str) -> str:
    return f"{prefix}\n\nAssistant: {reply}"


def test_stage_hub_local_directories(workdir, capsys):
    import datasets

    # 1) train.jsonl in HH shape: multi-turn dialogues, one without a final Assistant turn.
    hh_dir = workdir / "hh_ds"
    hh_dir.mkdir()
    pre = [f"\n\nHuman: {p}" for p in (OCEAN, SPACE, MUSIC, BOOKS)]
    multi = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: " + OCEAN
    rows = [
        {"chosen": _hh(pre[0], "blue waves"), "rejected": _hh(pre[0], "gloomy")},
        {"chosen": _hh(pre[1], "bright stars"), "rejected": _hh(pre[1], "dull")},
        {"chosen": pre[2], "rejected": _hh(pre[2], "noise")},  # row 3: no final Assistant turn
        {"chosen": _hh(pre[3], "ink and pages"), "rejected": _hh(pre[3], "bad")},
        {"chosen": _hh(multi, "the tide"), "rejected": _hh(multi, "meh")},
    ]
    (hh_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _params(workdir / "params.yaml", "{source: hub, path: hh_ds, adapter: hh}")
    assert stage.main([]) == 0, capsys.readouterr().err
    out = workdir / "data" / "curated"
    q = _read(out / "quarantine.jsonl")
    assert [(r["file"], r["line"]) for r in q] == [("hh_ds", 3)]
    assert "does not end with an 'Assistant:' turn" in q[0]["error"]
    prefs = _read(out / "prefs" / "train.jsonl") + _read(out / "prefs" / "eval.jsonl")
    by_chosen = {r["chosen"]: r for r in prefs}
    assert by_chosen["the tide"]["prompt"] == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": OCEAN},
    ]
    assert by_chosen["blue waves"]["prompt"] == [{"role": "user", "content": OCEAN}]
    assert by_chosen["blue waves"]["source"] == "hub:hh_ds"
    m = json.loads((out / "metrics.json").read_text())
    assert (m["input_rows"], m["quarantined"], m["kept_rows"]) == (5, 1, 4)

    # 2) a parquet shard in the hub layout, TRL conversational shape, through 'auto' and max_rows.
    pq_dir = workdir / "pq_ds" / "data"
    pq_dir.mkdir(parents=True)
    u = lambda t: [{"role": "user", "content": t}]  # noqa: E731
    a = lambda t: [{"role": "assistant", "content": t}]  # noqa: E731
    pq_rows = [
        {"id": f"r{i}", "prompt": u(p), "chosen": a(c), "rejected": a(r)}
        for i, (p, c, r) in enumerate([(OCEAN, "waves", "no"), (SPACE, "stars", "no"), (MUSIC, "song", "song"),
                                       (BOOKS, "pages", "no"), ("extra", "beyond", "max_rows")])
    ]
    datasets.Dataset.from_list(pq_rows).to_parquet(str(pq_dir / "train-00000-of-00001.parquet"))
    (workdir / "params.yaml").write_text(
        "experiment: test-curate\nseed: 1\ndata: {source: hub, path: pq_ds, adapter: auto, max_rows: 4}\n"
        "curate: {eval_fraction: 0.3}\n"
    )
    assert stage.main([]) == 0, capsys.readouterr().err
    q = _read(out / "quarantine.jsonl")
    assert [(r["file"], r["line"]) for r in q] == [("pq_ds", 3)]
    assert "'chosen' equals 'rejected'" in q[0]["error"]
    assert json.loads(q[0]["raw"])["id"] == "r2"
    m = json.loads((out / "metrics.json").read_text())
    assert (m["input_rows"], m["pref_train_rows"], m["pref_eval_rows"]) == (4, 2, 1)
    assert [r["id"] for r in _read(out / "prefs" / "eval.jsonl")] == ["r3"]  # books


def test_stage_hub_missing_dataset_exits_2(workdir, capsys):
    _params(workdir / "params.yaml", "{source: hub, path: ./no_such_dataset_dir}")
    assert stage.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ./no_such_dataset_dir: cannot load split 'train'")
    assert "Traceback" not in err
