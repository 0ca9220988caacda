"""Bad input to every stage that reads pipeline files: a clear `error: file:line: ... (fix: ...)` and exit
code 2 before any model is loaded, never a traceback from inside a library, and nothing overwritten."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml

PARAMS = {"rounds": {"r1": {"algo": "dpo", "prev": "sft"}}}

GOOD_PROMPT = {"id": "p1", "prompt": "tell me about ocean"}
GOOD_SFT = {"id": "s1", "prompt": "tell me about ocean", "response": "waves are calm"}
GOOD_PAIR = {"id": "x1", "prompt": "tell me about ocean", "chosen": "waves are calm", "rejected": "dull"}
GOOD_SAMPLE = {"prompt_id": "p1", "sample_idx": 0, "prompt": "tell me about ocean", "response": "waves",
               "num_tokens": 2, "finish_reason": "stop", "seed": 0}

# (stage, args, file it reads, lines written to that file, text the error must contain)
CASES = [
    ("sft", [], "data/curated/sft.jsonl", [json.dumps(GOOD_SFT), "{not json"], "data/curated/sft.jsonl:2: invalid JSON"),
    ("sft", [], "data/curated/sft.jsonl", [json.dumps({**GOOD_SFT, "response": ""})], ":1: field 'response' is an empty string"),
    ("sft", [], "data/curated/sft.jsonl", [], "data/curated/sft.jsonl: the file has no rows"),
    ("reward_model", [], "data/curated/prefs/train.jsonl", [json.dumps({**GOOD_PAIR, "rejected": GOOD_PAIR["chosen"]})],
     ":1: 'chosen' equals 'rejected'"),
    ("reward_model", [], "data/curated/prefs/train.jsonl", [json.dumps(GOOD_PAIR), json.dumps(GOOD_PAIR)],
     ":2: duplicate id 'x1'"),
    ("generate", ["--round", "r1"], "data/curated/prompts/train.jsonl", [json.dumps({"id": "p1", "prompt": 7})],
     ":1: field 'prompt' must be a string or a list"),
    ("generate", ["--round", "r1"], "data/curated/prompts/train.jsonl", [b"\xff\xfe{}"], ":1: not valid UTF-8"),
    ("score", ["--round", "r1"], "data/rounds/r1/samples.jsonl", [json.dumps({**GOOD_SAMPLE, "num_tokens": "2"})],
     ":1: field 'num_tokens' has type str"),
    ("pairs", ["--round", "r1"], "data/rounds/r1/samples.jsonl", [json.dumps({"prompt_id": "p1"})],
     ":1: missing field 'sample_idx'"),
    ("dpo", ["--round", "r1"], "data/rounds/r1/pairs.jsonl", [json.dumps(["a", "list"])], ":1: expected a JSON object"),
    ("evaluate", ["--round", "r1"], "data/curated/prompts/eval.jsonl", [json.dumps({"prompt": "no id"})],
     ":1: missing field 'id'"),
    ("generate", ["--round", "r1"], None, None, "data/curated/prompts/train.jsonl: file not found"),
]


@pytest.mark.parametrize("stage,args,path,lines,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_stage_input_is_a_clear_error(tmp_path, monkeypatch, capsys, stage, args, path, lines, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    if path is not None:
        f = tmp_path / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))
    module = importlib.import_module(f"alignloop.stages.{stage}")
    assert module.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err
    # Nothing was produced or overwritten by the failed stage.
    assert not (tmp_path / "data/models").exists() and not (tmp_path / "data/rounds/r1/policy").exists()


def test_unknown_round_is_rejected_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    from alignloop.stages import generate

    assert generate.main(["--round", "r7"]) == 2
    err = capsys.readouterr().err
    assert "no round 'r7'" in err and "alignloop render" in err


def test_bad_params_are_all_reported_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "dpo": {"beta": -1}, "generate": {"n": 0}, "sft": {"lrr": 1},
        "rounds": {"r1": {"algo": "dpo", "prev": "r0"}},
    }))
    from alignloop.stages import sft

    assert sft.main([]) == 2
    err = capsys.readouterr().err
    for key in ("dpo.beta", "generate.n", "sft.lrr", "rounds.r1.prev"):
        assert key in err, err


def test_stale_dvc_yaml_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    from alignloop.stages import sft

    assert sft.main([]) == 2
    assert "alignloop render" in capsys.readouterr().err
