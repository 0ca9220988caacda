"""Pair selection: best vs worst of n by reward, with the documented edge cases."""

from __future__ import annotations

import pytest

from alignloop.core.pairs import group_by_prompt, max_min_pair, select_pairs


def sample(pid: str, idx: int, text: str, prompt: str = "tell me about ocean") -> dict:
    return {"prompt_id": pid, "sample_idx": idx, "prompt": prompt, "response": text, "num_tokens": len(text.split())}


def cands(rewards: list[float], texts: list[str] | None = None, pid: str = "p0") -> list[tuple[dict, float]]:
    texts = texts or [f"reply {i}" for i in range(len(rewards))]
    return [(sample(pid, i, t), r) for i, (t, r) in enumerate(zip(texts, rewards))]


# --- max_min_pair -----------------------------------------------------------------------------------


def test_normal_case_best_vs_worst():
    # rewards 0.3, 0.9, -0.2, 0.5 -> best idx 1 (0.9), worst idx 2 (-0.2); margin 1.1 >= 0.1
    c = cands([0.3, 0.9, -0.2, 0.5])
    chosen, rejected, rc, rr = max_min_pair(c, min_margin=0.1)
    assert chosen is c[1][0] and rejected is c[2][0]
    assert (rc, rr) == (0.9, -0.2)


def test_all_rewards_equal_is_none():
    assert max_min_pair(cands([0.7, 0.7, 0.7, 0.7]), min_margin=0.0) is None


def test_fewer_than_two_is_none():
    assert max_min_pair(cands([1.0]), min_margin=0.0) is None
    assert max_min_pair([], min_margin=0.0) is None


def test_margin_below_min_margin_is_none():
    # 0.55 - 0.5 = 0.05 < 0.1
    assert max_min_pair(cands([0.5, 0.55]), min_margin=0.1) is None
    # margin exactly at min_margin is kept (1.0 - 0.5 = 0.5, not below 0.5)
    assert max_min_pair(cands([1.0, 0.5]), min_margin=0.5) is not None
    # with min_margin 0 any strict gap is kept
    assert max_min_pair(cands([0.5, 0.55]), min_margin=0.0)[2:] == (0.55, 0.5)


def test_identical_texts_is_none():
    # best and worst differ only by surrounding whitespace
    assert max_min_pair(cands([1.0, 0.0], ["same text", "  same text \n"]), min_margin=0.1) is None


def test_empty_chosen_is_none():
    assert max_min_pair(cands([2.0, 0.0], ["   ", "a real reply"]), min_margin=0.1) is None
    assert max_min_pair(cands([2.0, 0.0], ["", "a real reply"]), min_margin=0.1) is None


def test_ties_broken_by_order_first_best_last_worst():
    # rewards 1, 2, 2, 0, 0: best ties at idx 1 and 2 -> first (1); worst ties at idx 3 and 4 -> last (4)
    c = cands([1.0, 2.0, 2.0, 0.0, 0.0])
    chosen, rejected, rc, rr = max_min_pair(c, min_margin=0.1)
    assert (chosen["sample_idx"], rejected["sample_idx"]) == (1, 4)
    assert (rc, rr) == (2.0, 0.0)
    # deterministic: same input -> same answer
    assert max_min_pair(c, 0.1)[:2] == max_min_pair(c, 0.1)[:2]


def test_negative_rewards():
    # -3, -1, -2 -> best idx 1 (-1), worst idx 0 (-3); margin 2
    chosen, rejected, rc, rr = max_min_pair(cands([-3.0, -1.0, -2.0]), min_margin=1.0)
    assert (chosen["sample_idx"], rejected["sample_idx"], rc, rr) == (1, 0, -1.0, -3.0)


# --- group_by_prompt --------------------------------------------------------------------------------


def test_group_by_prompt_joins_on_prompt_and_index():
    samples = [sample("p0", 0, "a"), sample("p0", 1, "b"), sample("p1", 0, "c")]
    scores = [  # a different order, and one extra score with no sample (ignored)
        {"prompt_id": "p1", "sample_idx": 0, "reward": 0.25},
        {"prompt_id": "p0", "sample_idx": 1, "reward": -1.0},
        {"prompt_id": "p0", "sample_idx": 0, "reward": 2.0},
        {"prompt_id": "p9", "sample_idx": 0, "reward": 9.0},
    ]
    groups = group_by_prompt(samples, scores)
    assert groups == {
        "p0": [(samples[0], 2.0), (samples[1], -1.0)],
        "p1": [(samples[2], 0.25)],
    }


def test_group_by_prompt_missing_score_raises_keyerror_naming_the_sample():
    samples = [sample("p0", 0, "a"), sample("p1", 3, "c")]
    scores = [{"prompt_id": "p0", "sample_idx": 0, "reward": 1.0}]
    with pytest.raises(KeyError, match=r"\('p1', 3\)"):
        group_by_prompt(samples, scores)


def test_group_by_prompt_index_must_match_too():
    # a score for (p0, 1) does not cover the sample (p0, 0)
    with pytest.raises(KeyError):
        group_by_prompt([sample("p0", 0, "a")], [{"prompt_id": "p0", "sample_idx": 1, "reward": 1.0}])


# --- select_pairs -----------------------------------------------------------------------------------


def test_select_pairs_fields_and_order():
    groups = {  # inserted out of order on purpose
        "p2": cands([0.0, 1.0], ["p2 low", "p2 high"], pid="p2"),
        "p0": cands([3.0, 1.0, 2.0], ["p0 best", "p0 worst", "p0 mid"], pid="p0"),
        "p1": cands([0.5, 0.5], ["p1 a", "p1 b"], pid="p1"),  # tie -> no pair
    }
    pairs = select_pairs(groups, min_margin=0.1, round_name="r2")
    assert [p["id"] for p in pairs] == ["r2-p0", "r2-p2"]
    assert pairs[0] == {
        "id": "r2-p0",
        "prompt": "tell me about ocean",
        "chosen": "p0 best",
        "rejected": "p0 worst",
        "chosen_score": 3.0,
        "rejected_score": 1.0,
        "source": "rejection_sampling:r2",
    }
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("p2 high", "p2 low")
    assert (pairs[1]["chosen_score"], pairs[1]["rejected_score"]) == (1.0, 0.0)


def test_select_pairs_empty_and_all_dropped():
    assert select_pairs({}, 0.1, "r1") == []
    assert select_pairs({"p0": cands([1.0, 1.05])}, 0.1, "r1") == []


def test_pairs_stage_strategies_are_params_and_reproducible(tmp_path, monkeypatch):
    """The pairs stage picks by `pairs.strategy`; max_random is seeded per round, so a rerun writes the same file."""
    import json

    import yaml

    from alignloop.pipeline.stages.pairs import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    d = tmp_path / "data/rounds/r1"
    d.mkdir(parents=True)
    samples, scores = [], []
    for p in range(6):
        for k, (text, reward) in enumerate([("short", 1.0), ("a much longer answer here", 3.0), ("mid one", 2.0),
                                            ("low", -1.0)]):
            samples.append({"prompt_id": f"p{p}", "sample_idx": k, "prompt": f"q{p}", "response": f"{text} {p}",
                            "num_tokens": len(text.split()) + 1, "finish_reason": "stop", "seed": 0})
            scores.append({"prompt_id": f"p{p}", "sample_idx": k, "reward": reward + 0.1 * p})
    (d / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
    (d / "scores.jsonl").write_text("".join(json.dumps(x) + "\n" for x in scores))

    def run(pairs_cfg):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(
            {"experiment": "t", "pairs": pairs_cfg, "rounds": {"r1": {"algo": "dpo", "prev": "sft"}}}))
        assert main(["--round", "r1"]) == 0
        return [json.loads(l) for l in (d / "pairs.jsonl").read_text().splitlines()]

    best_worst = run({"strategy": "max_min", "min_margin": 0.1})
    assert {(x["chosen"].split()[0], x["rejected"].split()[0]) for x in best_worst} == {("a", "low")}
    # 2 reward per token: short 1-2*2 = -3, mid 2-2*3 = -4, low -1-2*2 = -5, long 3-2*6 = -9 (+0.1p each)
    penalised = run({"strategy": "length_penalised", "length_penalty": 2.0, "min_margin": 0.1})
    assert {(x["chosen"].split()[0], x["rejected"].split()[0]) for x in penalised} == {("short", "a")}
    assert penalised[0]["source"] == "rejection_sampling:r1:length_penalised"
    first = run({"strategy": "max_random", "min_margin": 0.1})
    assert all(x["chosen"].startswith("a much") for x in first)
    assert len({x["rejected"].split()[0] for x in first}) > 1          # random lower ones, not always the worst
    assert run({"strategy": "max_random", "min_margin": 0.1}) == first  # same seed, same pairs
