"""The LLM judge against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/_judge_server.py answers from the
embedded gold reward): verdicts in both orders, the on-disk cache, retries on 429/5xx, and clear errors naming the
endpoint; then the llm_judge stage end to end in a small project, with the API key kept out of every output."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _judge_server import GoldJudgeServer
from alignloop.core.judging import DEFAULT_TEMPLATE
from alignloop.core.synthetic import gold_reward, make_prompts, write_response
from alignloop.ml.llm_judge import JudgeError, LLMJudge, Request


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    out = []
    for p in make_prompts(n, rng):
        a, b = write_response(p, rng, 0.9), write_response(p, rng, 0.2)
        if gold_reward(p, a) != gold_reward(p, b):
            out.append((p, a, b))
    return out


def _judge(server: GoldJudgeServer, cache: Path, **kw) -> LLMJudge:
    opts = dict(base_url=server.base_url, model=server.model, api_key=kw.pop("api_key", "EMPTY"),
                template=DEFAULT_TEMPLATE, cache_dir=cache, timeout_s=10, max_retries=3, concurrency=4)
    return LLMJudge(**{**opts, **kw})


def test_verdicts_follow_gold_in_both_orders_and_a_rerun_is_answered_from_the_cache(tmp_path):
    pairs = _pairs(12)
    reqs = [r for p, a, b in pairs for r in (Request(p, a, b), Request(p, b, a))]
    with GoldJudgeServer() as server:
        judge = _judge(server, tmp_path / "cache")
        got = judge.judge(reqs)
        assert server.answered == len(reqs) == judge.calls
        for (p, a, b), first, second in zip(pairs, got[0::2], got[1::2]):
            better_first = gold_reward(p, a) > gold_reward(p, b)
            assert (first.verdict, second.verdict) == ((1, 2) if better_first else (2, 1))
        again = _judge(server, tmp_path / "cache").judge(reqs)
        assert server.requests == len(reqs)  # no new call
        assert [g.verdict for g in again] == [g.verdict for g in got] and all(g.cached for g in again)


def test_429_and_500_are_retried_with_backoff(tmp_path):
    (p, a, b), = _pairs(3)[:1]
    for status in (429, 500):
        with GoldJudgeServer(fail_first=2, fail_status=status) as server:
            got = _judge(server, tmp_path / f"c{status}", concurrency=1).judge([Request(p, a, b)])
            assert server.requests == 3 and got[0].verdict in (1, 2)
        with GoldJudgeServer(fail_first=5, fail_status=status) as server:  # more failures than retries
            with pytest.raises(JudgeError, match=f"{server.base_url} answered HTTP {status} after retries"):
                _judge(server, tmp_path / f"d{status}", concurrency=1, max_retries=2).judge([Request(p, a, b)])
            assert server.requests == 3


def test_unreachable_wrong_key_wrong_model_and_garbage_answers_are_named(tmp_path):
    (p, a, b), = _pairs(3)[:1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    judge = LLMJudge(base_url=url, model="m", api_key="EMPTY", template=DEFAULT_TEMPLATE, cache_dir=tmp_path,
                     timeout_s=2, max_retries=0)
    with pytest.raises(JudgeError, match=f"LLM judge at {url} is unreachable .*fix: start the server"):
        judge.judge([Request(p, a, b)])
    with GoldJudgeServer(key="sk-right-key-123") as server:
        with pytest.raises(JudgeError, match="refused the key .*export JUDGE_KEY") as err:
            _judge(server, tmp_path, api_key="sk-wrong-key-456", key_env="JUDGE_KEY").judge([Request(p, a, b)])
        assert "sk-wrong-key-456" not in str(err.value)
        with pytest.raises(JudgeError, match="no model 'other'"):
            _judge(server, tmp_path, api_key="sk-right-key-123", model="other").judge([Request(p, a, b)])
    with GoldJudgeServer(garbage=True) as server:
        got = _judge(server, tmp_path / "g").judge([Request(p, a, b)])
        assert got[0].verdict is None and got[0].answer == "I cannot decide."
        assert not list((tmp_path / "g").rglob("*.json"))  # garbage is not cached: a fixed judge is asked again


# --- the stage, in a project of its own ------------------------------------------------------------------------


def _samples(prompts: list[str], quality: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i, p in enumerate(prompts):
        for k in range(2):
            text = write_response(p, rng, quality)
            rows.append({"prompt_id": f"p{i}", "sample_idx": k, "prompt": p, "response": text,
                         "num_tokens": len(text.split()), "finish_reason": "stop", "seed": 0})
    return rows


@pytest.fixture
def stage_project(tmp_path):
    """sft's evaluation samples are poor, r1's good (by gold): a judge that follows gold must prefer r1."""
    repo = Path(__file__).resolve().parents[1]
    prompts = make_prompts(30, random.Random(1))
    for rel, rows in (("data/eval/sft_samples.jsonl", _samples(prompts, 0.1, 2)),
                      ("data/rounds/r1/eval_samples.jsonl", _samples(prompts, 0.95, 3))):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(server: GoldJudgeServer, key: str, **judge_overrides) -> subprocess.CompletedProcess:
        params = {"experiment": "judge", "registry": {"enabled": False},
                  "evaluate": {"samples_per_prompt": 2},
                  "llm_judge": {"enabled": True, "base_url": server.base_url, "model": server.model,
                                "api_key_env": "JUDGE_API_KEY", "samples_per_prompt": 2, **judge_overrides},
                  "rounds": {"r1": {"algo": "dpo", "prev": "sft"}}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(repo),
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "JUDGE_API_KEY": key, "DO_NOT_TRACK": "1",
               "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "alignloop.pipeline.stages.llm_judge", "--round", "r1"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    return tmp_path, run


@pytest.mark.slow
def test_stage_judges_both_orders_caches_and_keeps_the_key_out_of_every_output(stage_project):
    root, run = stage_project
    key = "sk-test-secret-0123456789"
    with GoldJudgeServer(key=key) as server:
        proc = run(server, key)
        assert proc.returncode == 0, proc.stderr[-3000:]
        first = (root / "data/rounds/r1/llm_judge.json").read_text()
        m = json.loads(first)
        assert m["llm_pairs_vs_sft"] == 60 and m["llm_judgments"] == 120 == server.answered
        assert "120 calls, 0 answered from the cache" in proc.stdout
        assert m["win_rate_vs_sft_llm"] > 0.8 and m["win_rate_vs_sft_llm_ci"]["low"] > 0.5
        assert 0 < m["lc_win_rate_vs_sft_llm"] < 1 and m["llm_order_agreement_vs_sft"] > 0.8
        assert abs(m["llm_first_position_rate"] - 0.5) < 0.15  # each pair shown in both orders
        assert server.authorization == {f"Bearer {key}"}  # the key was sent ...
        rerun = run(server, key)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "0 calls, 120 answered from the cache" in rerun.stdout and server.requests == 120
        # the same file, byte for byte: the stages reading it (register, report) have nothing new to run on
        assert (root / "data/rounds/r1/llm_judge.json").read_text() == first
    # ... and appears in no output: stage logs, the MLflow store, the metrics, the cache.
    stores = [proc.stdout, proc.stderr, rerun.stdout, rerun.stderr, (root / "mlflow.db").read_bytes().decode("latin1")]
    stores += [p.read_text() for p in (root / ".alignloop").rglob("*.json")]
    assert all(key not in s for s in stores)


@pytest.mark.slow
def test_stage_errors_name_the_endpoint_and_the_fix_without_a_traceback(stage_project):
    root, run = stage_project
    with GoldJudgeServer(garbage=True) as server:
        proc = run(server, "k")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: LLM judge at {server.base_url} (gold-judge): 120 of 120 answers name neither response" in proc.stderr
    assert not (root / "data/rounds/r1/llm_judge.json").exists()
    with GoldJudgeServer() as server:
        url = server.base_url
    proc = run(server, "k", max_retries=0)  # the server is gone
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: LLM judge at {url} is unreachable" in proc.stderr
