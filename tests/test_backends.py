"""Generation backends (alignloop.ml.backends): one contract, checked on every backend.

The same tests run on the HF backend here and on vLLM on a GPU machine (marked `gpu`, `vllm`): rows contract,
n per prompt in prompt order, per-batch seeding (rerun and shard equality), stop strings, max tokens and
continued sample indices. The model is tiny and random: the contract, not quality, is under test.
"""

from __future__ import annotations

import pytest

from alignloop.ml.backends import HFBackend, SamplingSpec, load_backend, resolve
from alignloop.core.config import ArchConfig, ModelConfig
from alignloop.ml.inference import truncate_at_stop
from alignloop.ml.modeling import build_tiny_model, train_tokenizer
from alignloop.core.synthetic import make_corpus

FIELDS = {"prompt_id", "sample_idx", "prompt", "response", "num_tokens", "finish_reason", "seed"}
SPEC = SamplingSpec(n=3, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0, max_prompt_tokens=48, batch_size=2)

pytestmark = pytest.mark.usefixtures("one_thread")


# --- pure helpers ---------------------------------------------------------------------------------


def test_truncate_at_stop_cuts_at_the_earliest_stop_string():
    assert truncate_at_stop("a b. c! d", [".", "!"]) == ("a b", True)
    assert truncate_at_stop("a b! c. d", [".", "!"]) == ("a b", True)
    assert truncate_at_stop("no stop here", ["."]) == ("no stop here", False)
    assert truncate_at_stop("x", []) == ("x", False)
    assert truncate_at_stop(".starts", ["."]) == ("", True)
    assert truncate_at_stop("abc", [""]) == ("abc", False)  # an empty stop string never matches


def test_resolve_auto_is_hf_without_a_gpu(monkeypatch):
    import alignloop.ml.backends as b

    monkeypatch.setattr(b, "vllm_available", lambda: False)
    assert resolve("auto") == "hf" and resolve("hf") == "hf"
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[vllm\]'"):
        resolve("vllm")
    monkeypatch.setattr(b, "vllm_available", lambda: True)
    assert resolve("auto") == "vllm"
    with pytest.raises(ValueError, match="auto, hf or vllm"):
        resolve("tgi")


# --- the contract, per backend ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    corpus = make_corpus(num_prompts=40, sft_per_prompt=2, pairs_per_prompt=1, annotator_temperature=0.5,
                         good_demo_fraction=0.35, seed=0)
    tok = train_tokenizer([r["prompt"] for r in corpus["prompts"]] + [r["response"] for r in corpus["sft"]], 300)
    model = build_tiny_model(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                        vocab_size=300), tok, max_length=64, seed=0)
    path = tmp_path_factory.mktemp("policy")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    prompts = [(r["id"], r["prompt"]) for r in corpus["prompts"][:4]]
    # One chat-message prompt: rows must carry the prompt through unchanged.
    prompts.append(("chat", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompts[0][1]}]))
    return str(path), prompts


MODEL_CFG = ModelConfig(name_or_path="embedded", max_length=64)


@pytest.fixture(scope="module", params=["hf", pytest.param("vllm", marks=[pytest.mark.gpu, pytest.mark.vllm])])
def backend(request, policy_dir):
    return load_backend(request.param, policy_dir[0], MODEL_CFG, gpu_memory_utilization=0.2)


@pytest.fixture(scope="module")
def prompts(policy_dir):
    return policy_dir[1]


@pytest.fixture(scope="module")
def rows(backend, prompts):
    return backend.sample(prompts, SPEC)


def test_rows_contract(rows, prompts):
    assert len(rows) == len(prompts) * 3
    for i, (pid, prompt) in enumerate(prompts):
        mine = rows[i * 3:(i + 1) * 3]
        assert [r["prompt_id"] for r in mine] == [pid] * 3
        assert [r["sample_idx"] for r in mine] == [0, 1, 2]
        assert all(r["prompt"] == prompt for r in mine)
    for r in rows:
        assert set(r) == FIELDS
        assert r["finish_reason"] in {"stop", "length"}
        assert 1 <= r["num_tokens"] <= 8
        if r["finish_reason"] == "length":
            assert r["num_tokens"] == 8
    assert [r["seed"] for r in rows] == [0] * 6 + [1] * 6 + [2] * 3  # batch b of 2 prompts: seed + b


def test_same_seed_same_rows_other_seed_other_rows(backend, rows, prompts):
    from dataclasses import replace

    assert backend.sample(prompts, SPEC) == rows
    other = backend.sample(prompts, replace(SPEC, seed=7))
    assert [r["response"] for r in other] != [r["response"] for r in rows]
    assert len({r["response"] for r in rows[:3]}) > 1  # the n samples of one prompt differ


def test_shards_equal_one_run(backend, rows, prompts):
    from dataclasses import replace

    assert backend.sample(prompts[:2], SPEC) + backend.sample(prompts[2:], replace(SPEC, seed=1)) == rows


def test_stop_strings_end_responses(backend, prompts):
    from dataclasses import replace

    out = backend.sample(prompts, replace(SPEC, stop=(" ",), max_new_tokens=12))
    assert all(" " not in r["response"] for r in out)
    stopped = [r for r in out if r["finish_reason"] == "stop"]
    assert stopped and any(r["num_tokens"] < 12 for r in stopped)
    assert all(r["num_tokens"] <= 12 for r in out)


def test_first_idx_continues_sample_indices(backend, prompts):
    from dataclasses import replace

    out = backend.sample(prompts[:2], replace(SPEC, n=2), first_idx={prompts[0][0]: 5})
    assert [r["sample_idx"] for r in out] == [5, 6, 0, 1]


def test_hf_backend_is_the_stage_sampler(policy_dir):
    """The HF backend is alignloop.ml.inference.sample: same rows as calling it directly."""
    from alignloop.ml.inference import sample
    from alignloop.ml.modeling import load_causal_lm, load_tokenizer

    path, prompts = policy_dir
    be = HFBackend.load(path, MODEL_CFG)
    direct = sample(load_causal_lm(path, MODEL_CFG), load_tokenizer(path, MODEL_CFG), prompts, n=3, max_new_tokens=8,
                    temperature=1.0, top_p=1.0, batch_size=2, seed=0, max_prompt_tokens=48)
    assert be.sample(prompts, SPEC) == direct
