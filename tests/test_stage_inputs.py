"""Bad input to every stage that reads pipeline files: a clear `error: file:line: ... (fix: ...)` and exit
code 2 before any model is loaded, never a traceback from inside a library, and nothing overwritten."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml

PARAMS = {"preference_model": {"enabled": True},
          "rounds": {"r1": {"algo": "dpo", "prev": "sft"}, "p1": {"algo": "ppo", "prev": "sft"},
                     "g1": {"algo": "grpo", "prev": "sft"}, "s1": {"algo": "sppo", "prev": "sft"},
                     "l1": {"algo": "lipo", "prev": "sft"}}}

GOOD_PROMPT = {"id": "p1", "prompt": "tell me about ocean"}
GOOD_SFT = {"id": "s1", "prompt": "tell me about ocean", "response": "waves are calm"}
GOOD_PAIR = {"id": "x1", "prompt": "tell me about ocean", "chosen": "waves are calm", "rejected": "dull"}
GOOD_SAMPLE = {"prompt_id": "p1", "sample_idx": 0, "prompt": "tell me about ocean", "response": "waves",
               "num_tokens": 2, "finish_reason": "stop", "seed": 0}
GOOD_SCORE = {"prompt_id": "p1", "sample_idx": 0, "reward": 0.5}
GOOD_RANKING = {"prompt_id": "p1", "prompt": "tell me about ocean", "round": "l1",
                "responses": [{"response": "waves", "sample_idx": 0, "reward": 1.0, "rank": 1},
                              {"response": "dull", "sample_idx": 1, "reward": 0.0, "rank": 2}]}
R1 = ["--round", "r1"]
PAIRS_2 = [GOOD_PAIR, {**GOOD_PAIR, "id": "x2", "chosen": "calm blue waves"}]

# Every pipeline file type: (name, stage that reads it, its args, path, a good row, its text fields, a field and a
# value of the wrong type for it, other files the stage reads first). Each is fed every defect below as its second
# line (the first is good), so the error must point at line 2.
FILES = [
    ("prompts", "generate", R1, "data/curated/prompts/train.jsonl", GOOD_PROMPT, ["prompt"], ("prompt", 7), {}),
    ("eval-prompts", "evaluate", R1, "data/curated/prompts/eval.jsonl", GOOD_PROMPT, ["prompt"], ("id", 1.5), {}),
    ("sft", "sft", [], "data/curated/sft.jsonl", GOOD_SFT, ["prompt", "response"], ("response", ["a"]), {}),
    ("prefs", "reward_model", [], "data/curated/prefs/train.jsonl", GOOD_PAIR, ["prompt", "chosen", "rejected"],
     ("chosen", {"text": "a"}), {}),
    ("pairs", "dpo", R1, "data/rounds/r1/pairs.jsonl", GOOD_PAIR, ["prompt", "chosen", "rejected"], ("rejected", 3), {}),
    ("samples", "score", R1, "data/rounds/r1/samples.jsonl", GOOD_SAMPLE, [], ("num_tokens", "2"), {}),
    ("scores", "pairs", R1, "data/rounds/r1/scores.jsonl", GOOD_SCORE, [], ("reward", "high"),
     {"data/rounds/r1/samples.jsonl": [GOOD_SAMPLE, {**GOOD_SAMPLE, "sample_idx": 1}]}),
    ("eval-prefs", "reward_model", [], "data/curated/prefs/eval.jsonl", GOOD_PAIR, ["prompt", "chosen", "rejected"],
     ("prompt", 5), {"data/curated/prefs/train.jsonl": PAIRS_2}),
    ("ppo-prompts", "ppo", ["--round", "p1"], "data/curated/prompts/train.jsonl", GOOD_PROMPT, ["prompt"],
     ("prompt", 7), {}),
    ("grpo-prompts", "grpo", ["--round", "g1"], "data/curated/prompts/train.jsonl", GOOD_PROMPT, ["prompt"],
     ("prompt", 7), {}),
    ("selfplay-samples", "selfplay", ["--algo", "sppo", "--round", "s1"], "data/rounds/s1/samples.jsonl",
     GOOD_SAMPLE, [], ("num_tokens", "2"), {}),
    ("rankings", "selfplay", ["--algo", "lipo", "--round", "l1"], "data/rounds/l1/rankings.jsonl", GOOD_RANKING,
     ["prompt"], ("responses", "x"), {}),
    ("pm-prefs", "preference_model", [], "data/curated/prefs/train.jsonl", GOOD_PAIR, ["prompt", "chosen", "rejected"],
     ("chosen", {"text": "a"}), {}),
    ("base-sft", "base", [], "data/curated/sft.jsonl", GOOD_SFT, ["prompt", "response"], ("response", 1), {}),
    ("base-prefs", "base", [], "data/curated/prefs/train.jsonl", GOOD_PAIR, ["prompt", "chosen", "rejected"],
     ("rejected", None), {"data/curated/sft.jsonl": [GOOD_SFT]}),
]
EMPTY_OK = {"eval-prefs", "base-prefs"}  # files a stage may find empty (no held-out pairs)
# What each stage writes: a previous good output there must survive the failed run untouched.
OUTS = {"generate": "data/rounds/r1/samples.jsonl", "evaluate": "data/rounds/r1/eval.json", "sft": "data/models/sft",
        "reward_model": "data/models/rm", "dpo": "data/rounds/r1/policy", "score": "data/rounds/r1/scores.jsonl",
        "pairs": "data/rounds/r1/pairs.jsonl", "ppo": "data/rounds/p1/policy", "base": "data/models/base",
        "grpo": "data/rounds/g1/policy", "selfplay": "data/rounds/s1/policy", "preference_model": "data/models/pm"}
OUTS_OF_FILE = {"rankings": "data/rounds/l1/policy"}  # a stage module with several stages: by the file it reads


def _other(good: dict) -> dict:
    """A second valid row (another id / sample) so only the defect makes line 2 bad."""
    if "id" in good:
        return {**good, "id": good["id"] + "b", **({"chosen": "waves are calm and blue"} if "chosen" in good else {})}
    return {**good, "sample_idx": 1}


def _defects(good: dict, text: list[str], wrong: tuple, empty_ok: bool):
    """(defect name, line 2 as bytes or None for an empty file, text the error must contain)."""
    key = "id" if "id" in good else "prompt_id"
    other = json.dumps(_other(good))
    yield "duplicate-key", (other[:-1] + f', "{key}": "again"}}').encode(), f"key '{key}' appears twice"
    yield "nan", (other[:-1] + ', "x": NaN}').encode(), "NaN is not valid JSON"
    yield "lone-surrogate", json.dumps({**_other(good), key: "p\ud800"}).encode(), "lone surrogate"
    yield "invalid-json", b'{"id": "p2", "prompt": ', "invalid JSON"
    yield "non-utf8", b'{"id": "\xff\xfe"}', "not valid UTF-8"
    yield "not-an-object", b'["a", "list"]', "expected a JSON object"
    yield "missing-field", json.dumps({k: v for k, v in _other(good).items() if k != key}).encode(), f"missing field '{key}'"
    yield "wrong-type", json.dumps({**_other(good), wrong[0]: wrong[1]}).encode(), f"field '{wrong[0]}'"
    yield "duplicate", json.dumps(good).encode(), "duplicate"
    for field in text:
        yield f"empty-{field}", json.dumps({**_other(good), field: " "}).encode(), f"field '{field}' is an empty string"
    if "chosen" in good:
        yield "chosen-equals-rejected", json.dumps({**_other(good), "rejected": _other(good)["chosen"]}).encode(), \
            "'chosen' equals 'rejected'"
    if not empty_ok:
        yield "empty-file", None, "the file has no rows"


CASES = [(f"{name}-{defect}", stage, args, path, good, line2, expected, before)
         for name, stage, args, path, good, text, wrong, before in FILES
         for defect, line2, expected in _defects(good, text, wrong, name in EMPTY_OK)]


@pytest.mark.parametrize("name,stage,args,path,good,line2,expected,before", CASES, ids=[c[0] for c in CASES])
def test_bad_stage_input_is_a_clear_error(tmp_path, monkeypatch, capsys, name, stage, args, path, good, line2, expected,
                                          before):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for other, rows in before.items():
        (tmp_path / other).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / other).write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = tmp_path / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"" if line2 is None else json.dumps(good).encode() + b"\n" + line2 + b"\n")
    out = tmp_path / next((o for f, o in OUTS_OF_FILE.items() if name.startswith(f + "-")), OUTS[stage])  # earlier good run's
    sentinel = out / "model.safetensors" if out.suffix == "" else out
    sentinel.parent.mkdir(parents=True, exist_ok=True)
    sentinel.write_bytes(b"previous good output")
    module = importlib.import_module(f"alignloop.pipeline.stages.{stage}")
    assert module.main(args) == 2
    err = capsys.readouterr().err
    where = f"{path}: the file has no rows" if line2 is None else f"{path}:2: "
    assert err.startswith("error: ") and where in err and expected in err and "fix" in err, err
    assert "Traceback" not in err
    # Nothing was produced or overwritten by the failed stage: its previous output is as it was, alone.
    assert sentinel.read_bytes() == b"previous good output"
    assert not out.is_dir() or [p.name for p in out.iterdir()] == ["model.safetensors"]
    made = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    assert made <= {path, sentinel.relative_to(tmp_path).as_posix(), *before}, made


def test_missing_input_file_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    from alignloop.pipeline.stages import generate

    assert generate.main(R1) == 2
    assert "data/curated/prompts/train.jsonl: file not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from alignloop.ml.modeling import train_tokenizer

    return train_tokenizer(["tell me about ocean waves are calm"] * 50, vocab_size=300)


@pytest.mark.parametrize("stage,policy_dir,max_new", [("generate", "data/models/sft", "generate.max_new_tokens"),
                                                      ("evaluate", "data/rounds/r1/policy", "evaluate.max_new_tokens")])
def test_prompt_longer_than_the_context_is_a_clear_error(tmp_path, monkeypatch, capsys, tiny_tokenizer, stage,
                                                         policy_dir, max_new):
    """A prompt that cannot fit with its generation prompt would lose its end to truncation: refused by line,
    before the model is loaded."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "model": {"max_length": 48}}))
    tiny_tokenizer.save_pretrained(tmp_path / policy_dir)  # a tokenizer but no weights: the check must come first
    path = "data/curated/prompts/train.jsonl" if stage == "generate" else "data/curated/prompts/eval.jsonl"
    rows = [GOOD_PROMPT, {"id": "long", "prompt": "ocean " * 200}, {**GOOD_PROMPT, "id": "p3"}]
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    module = importlib.import_module(f"alignloop.pipeline.stages.{stage}")
    assert module.main(R1) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{path}:2: prompt 'long' has" in err and max_new in err, err
    assert "fix: raise model.max_length" in err and "Traceback" not in err


def test_unknown_round_is_rejected_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    from alignloop.pipeline.stages import generate

    assert generate.main(["--round", "r7"]) == 2
    err = capsys.readouterr().err
    assert "no round 'r7'" in err and "alignloop render" in err


def test_bad_params_are_all_reported_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "dpo": {"beta": -1}, "generate": {"n": 0}, "sft": {"lrr": 1, "epochs": "three"},
        "rounds": {"r1": {"algo": "dpo", "prev": "r0"}},
    }))
    from alignloop.pipeline.stages import sft

    assert sft.main([]) == 2
    err = capsys.readouterr().err
    # Unknown key, wrong type, impossible values, a round pointing at a missing prev: all in one error.
    for key in ("dpo.beta", "generate.n", "sft.lrr", "sft.epochs", "rounds.r1.prev"):
        assert key in err, err
    assert err.count("params.yaml:") >= 5 and "Traceback" not in err
    assert not (tmp_path / "data").exists()  # rejected before any work


def test_stale_dvc_yaml_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    from alignloop.pipeline.stages import sft

    assert sft.main([]) == 2
    assert "alignloop render" in capsys.readouterr().err
