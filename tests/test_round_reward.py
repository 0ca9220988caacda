"""The round's reward (alignloop.ml.rewards.RoundReward) and the score stage scoring with it.

RoundReward on reward functions alone (no model); the score stage on a tiny project — a copy of the package, one
random reward model, 40 samples — run as the stage process DVC would start: the default reward writes the rows it
always wrote; a reward model plus a reward function at weight 0.5 adds ``source_rewards`` and sums them; maxmin over
three sources computed in two shards equals the combination over the whole round; a bad reward-function name is a
clear error before any work.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from _project import REPO, sh
from alignloop.core.config import ConfigError, Params
from alignloop.core.reward_functions import length_window
from alignloop.core.rewards import RewardFunctionError, combine

FN = "alignloop.core.reward_functions:length_window"
MIXED = {"sources": [{"reward_model": "ensemble", "weight": 1.0}, {"function": FN, "weight": 0.5}]}


def _reward(reward: dict, ensemble: int = 1, root: Path = REPO):
    from alignloop.ml.rewards import RoundReward

    params = Params.model_validate({"reward": reward, "reward_model": {"ensemble": ensemble},
                                    "rounds": {"r1": {"prev": "sft"}}})
    dirs = [f"data/models/rm{'' if k == 0 else f'-{k}'}" for k in range(ensemble)]
    return RoundReward.from_params(params, "r1", dirs, root=root)


# --- RoundReward ----------------------------------------------------------------------------------------------------


def test_round_reward_of_functions_sums_and_maxmins():
    sources = [{"function": FN, "weight": 1.0}, {"function": "alignloop.core.reward_functions:repetition_penalty",
                                                 "weight": 2.0, "name": "rep"}]
    rw = _reward({"sources": sources})
    assert rw.labels == ["length_window", "rep"] and not rw.is_default and rw.model_dirs == []
    assert rw.function_modules == ["alignloop.core.reward_functions"]
    prompts = ["tell me about ocean"] * 3
    done = ["a b", "a a b b c c d", [{"role": "assistant", "content": "w1 w2 w3 w4 w5 w6"}]]
    cols = rw.sources(prompts, done, [{}, {}, {}])
    # length: 2 words -> 4 short: -1; 7 and 6 words: 0.  repetition: 0; 4 distinct of 7: -2 * 3/7; 0
    assert cols == {"length_window": [-1.0, 0.0, 0.0], "rep": [0.0, -2 * (1 - 4 / 7), 0.0]}
    assert rw(prompts, done) == [-1.0, 2 * -2 * (1 - 4 / 7), 0.0]  # 1 * length + 2 * repetition
    mm = _reward({"sources": sources, "aggregate": "maxmin"})
    assert mm(prompts, done) == combine([cols["length_window"], cols["rep"]], [1.0, 2.0], "maxmin")


def test_round_reward_defaults_and_members():
    rw = _reward({}, ensemble=3)
    assert rw.is_default and rw.labels == ["rm"] and rw.function_modules == []
    assert rw.model_dirs == ["data/models/rm", "data/models/rm-1", "data/models/rm-2"]  # every member
    one = _reward({"sources": [{"reward_model": 2}, {"function": FN, "weight": 0.1}]}, ensemble=3)
    assert one.labels == ["rm2", "length_window"] and one.model_dirs == ["data/models/rm-2"]  # that member only
    # params.yaml validation refuses a member the ensemble lacks; RoundReward checks too, for callers without Params
    from alignloop.core.config import RewardConfig, ScoreConfig
    from alignloop.ml.rewards import RoundReward

    with pytest.raises(ConfigError, match=r"reward source 'rm3' is reward_model 3, but the ensemble has 3 member\(s\)"):
        RoundReward(RewardConfig.model_validate({"sources": [{"reward_model": 3}]}), ScoreConfig(), Params().model,
                    rw.model_dirs)
    assert rw([], []) == []


def test_round_reward_loads_every_function_first():
    with pytest.raises(RewardFunctionError, match="'alignloop.core.reward_functions:nope'.*no attribute 'nope'"):
        _reward({"sources": [{"reward_model": "ensemble"}, {"function": "alignloop.core.reward_functions:nope"}]})
    with pytest.raises(RewardFunctionError, match="outside the project"):
        _reward(MIXED, root=REPO / "tests")  # the package is not under this "project"


def test_score_spec_tracks_the_reward_functions_and_the_prompts_only_when_used():
    from alignloop.pipeline.specs import Ctx
    from alignloop.pipeline.stages.score import SPECS

    spec = SPECS[0]
    default = Ctx(Params.model_validate({"rounds": {"r1": {"prev": "sft"}}}), "r1")
    mixed = Ctx(Params.model_validate({"rounds": {"r1": {"prev": "sft", "reward": MIXED}}}), "r1")
    assert spec.deps(default) == ["data/models/rm", "data/rounds/r1/samples.jsonl"]
    assert spec.deps(mixed) == ["data/models/rm", "data/rounds/r1/samples.jsonl", "data/curated/prompts/train.jsonl"]
    assert "alignloop/core/reward_functions.py" not in spec.code_files(default)
    assert "alignloop/core/reward_functions.py" in spec.code_files(mixed)
    assert {"alignloop/core/rewards.py", "alignloop/ml/rewards.py"} <= set(spec.code_files(default))
    assert "rounds.r1.reward" in spec.param_keys(default)


# --- the score stage on a tiny project ----------------------------------------------------------------------------

PARAMS = {"model": {"max_length": 64}, "score": {"batch_size": 2}, "registry": {"enabled": False},
          "rounds": {"r1": {"prev": "sft"}}}
ON_TOPIC = ("from alignloop.core.synthetic import TOPICS\n\n"
            "def on_topic(prompts, completions, meta=None, **kwargs):  # the share of the topic's words\n"
            "    return [sum(w in TOPICS[m['topic']] for w in c.split()) / max(1, len(c.split()))\n"
            "            for c, m in zip(completions, meta)]\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the package, a random reward model (with its score head saved, so every load is the same model),
    the curated prompts (with meta) and 40 samples: with score.batch_size 2, three blocks of 16."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignloop.core import files
    from alignloop.core.synthetic import make_corpus
    from alignloop.ml.modeling import train_tokenizer

    root = tmp_path_factory.mktemp("reward")
    shutil.copytree(REPO / "alignloop", root / "alignloop", ignore=shutil.ignore_patterns("__pycache__"))
    corpus = make_corpus(num_prompts=10, sft_per_prompt=4, pairs_per_prompt=0, annotator_temperature=0.5,
                         good_demo_fraction=0.35, seed=0)
    tok = train_tokenizer([r["prompt"] for r in corpus["prompts"]] + [r["response"] for r in corpus["sft"]], 300)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, num_labels=1,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(root / "data/models/rm")
    tok.save_pretrained(root / "data/models/rm")
    files.write_jsonl(root / "data/curated/prompts/train.jsonl", corpus["prompts"])
    ids = {r["prompt"]: r["id"] for r in corpus["prompts"]}
    seen: dict[str, int] = {}
    samples = []
    for r in corpus["sft"]:
        pid = ids[r["prompt"]]
        seen[pid] = seen.get(pid, -1) + 1
        samples.append({"prompt_id": pid, "sample_idx": seen[pid], "prompt": r["prompt"], "response": r["response"],
                        "num_tokens": len(r["response"].split()), "finish_reason": "stop", "seed": 0})
    files.write_jsonl(root / "data/rounds/r1/samples.jsonl", samples)
    (root / "proj_rewards.py").write_text(ON_TOPIC)
    return root


def _score(root: Path, reward: dict | None, *extra: str, expect: str = "") -> list[dict]:
    params = {**PARAMS, **({"reward": reward} if reward else {})}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh([sys.executable, "-m", "alignloop.pipeline.stages.score", "--round", "r1", *extra], root).stdout
    assert expect in out, out
    if "--shard" in extra:  # a shard worker writes only its shard (the test order is random: no earlier scores)
        return []
    return [json.loads(x) for x in (root / "data/rounds/r1/scores.jsonl").read_text().splitlines()]


def test_default_and_mixed_rewards(project):
    default = _score(project, None)
    assert len(default) == 40 and all(set(x) == {"prompt_id", "sample_idx", "reward"} for x in default)
    mixed = _score(project, MIXED)
    samples = [json.loads(x) for x in (project / "data/rounds/r1/samples.jsonl").read_text().splitlines()]
    assert [(x["prompt_id"], x["sample_idx"]) for x in mixed] == [(x["prompt_id"], x["sample_idx"]) for x in default]
    for d, m, s in zip(default, mixed, samples):
        assert list(m) == ["prompt_id", "sample_idx", "reward", "source_rewards"]
        src = m["source_rewards"]
        assert list(src) == ["rm", "length_window"]
        assert src["rm"] == d["reward"]  # the reward model's source is the default reward, bit for bit
        assert src["length_window"] == length_window([s["prompt"]], [s["response"]])[0]
        assert m["reward"] == src["rm"] + 0.5 * src["length_window"]
    assert any(m["source_rewards"]["length_window"] < 0 for m in mixed)  # the rule did change some rewards


def test_maxmin_over_shards_is_the_whole_rounds_combination(project):
    reward = {"aggregate": "maxmin", "sources": [{"reward_model": "ensemble"}, {"function": FN, "weight": 0.5},
                                                 {"function": "proj_rewards:on_topic", "weight": 2.0}]}
    for shard in ("0/2", "1/2"):  # two shard workers; then the stage merges their blocks
        _score(project, reward, "--shard", shard)
    rows = _score(project, reward, expect="(merged 2 precomputed shard(s))")
    cols = [[x["source_rewards"][k] for x in rows] for k in ("rm", "length_window", "on_topic")]
    assert [x["reward"] for x in rows] == combine(cols, [1.0, 0.5, 2.0], "maxmin")  # z-scores over all 40 rows
    # on_topic read each prompt's meta (its topic) by prompt_id
    from alignloop.core.synthetic import TOPICS

    prompts = {json.loads(x)["id"]: json.loads(x) for x in
               (project / "data/curated/prompts/train.jsonl").read_text().splitlines()}
    samples = [json.loads(x) for x in (project / "data/rounds/r1/samples.jsonl").read_text().splitlines()]
    topics = [prompts[s["prompt_id"]]["meta"]["topic"] for s in samples]
    assert len(set(topics)) > 1
    assert cols[2] == [sum(w in TOPICS[t] for w in s["response"].split()) / max(1, len(s["response"].split()))
                       for t, s in zip(topics, samples)]
    assert len(set(cols[2])) > 3


@pytest.mark.parametrize("function, expected", [
    ("no_such_module:fn", "no module 'no_such_module'"),
    ("proj_rewards:nope", "no attribute 'nope' (fix: one of the functions it defines: ['on_topic']"),
    ("os:system", "outside the project"),
])
def test_a_bad_reward_function_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys, function, expected):
    from alignloop.pipeline.stages import score

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "proj_rewards", raising=False)
    (tmp_path / "proj_rewards.py").write_text(ON_TOPIC)
    reward = {"sources": [{"reward_model": "ensemble"}, {"function": function, "weight": 0.5}]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "reward": reward}))
    assert score.main(["--round", "r1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: reward function '{function}': ") and expected in err and "(fix: " in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "data").exists()  # nothing read or written: no samples were even needed
