"""Batched inference (alignloop.ml.inference): sampling, reward scoring and response log-probabilities.

Models are tiny and randomly initialised: the tests check the contracts (fields, seeding, ordering, padding
invariance, the log-prob definition), not quality.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.core.config import ArchConfig
from alignloop.ml.inference import response_logprobs, reward_scores, sample
from alignloop.ml.modeling import build_tiny_model, render_full, render_prompt, train_tokenizer
from alignloop.core.synthetic import make_corpus

TINY_ARCH = ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300)
FIELDS = {"prompt_id", "sample_idx", "prompt", "response", "num_tokens", "finish_reason", "seed"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(num_prompts=60, sft_per_prompt=2, pairs_per_prompt=1, annotator_temperature=0.5,
                       good_demo_fraction=0.35, seed=0)


@pytest.fixture(scope="module")
def tok(corpus):
    texts = [r["prompt"] for r in corpus["prompts"]] + [r["response"] for r in corpus["sft"]]
    return train_tokenizer(texts, 300)


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_model(TINY_ARCH, tok, max_length=64, seed=0)


@pytest.fixture(scope="module")
def rm(tok):
    """What load_reward_model gives for a Llama checkpoint: a scalar head, pad_token_id set for pooling."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      num_labels=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def prompts(corpus) -> list[tuple[str, object]]:
    rows = [(r["id"], r["prompt"]) for r in corpus["prompts"][:4]]
    # One chat-message prompt: rows must carry the prompt through unchanged.
    rows.append(("chat", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": rows[0][1]}]))
    return rows


def _sample(model, tok, prompts, **kw):
    args = dict(n=3, max_new_tokens=8, temperature=1.0, top_p=1.0, batch_size=2, seed=0, max_prompt_tokens=64)
    return sample(model, tok, prompts, **{**args, **kw})


# The rows contract, seeding, shards and stop strings are tested once per backend in tests/test_backends.py (the
# HF backend is this sample()); here: what only the HF path shows.


def test_sample_stops_at_eos(tok, prompts):
    """A model pushed towards EOS stops early; tokens after EOS (padding in the batch) are not counted."""
    eager = build_tiny_model(TINY_ARCH, tok, max_length=64, seed=0)
    eager.generation_config.sequence_bias = {(tok.eos_token_id,): 100.0}
    out = _sample(eager, tok, prompts, max_new_tokens=6)
    assert all(r["finish_reason"] == "stop" and r["num_tokens"] == 1 and r["response"] == "" for r in out)

    eager.generation_config.sequence_bias = {(tok.eos_token_id,): 4.0}
    mixed = _sample(eager, tok, prompts, max_new_tokens=6)
    reasons = {r["finish_reason"] for r in mixed}
    assert reasons == {"stop", "length"}
    for r in mixed:
        assert r["num_tokens"] <= 6
        if r["finish_reason"] == "length":
            assert r["num_tokens"] == 6
        # special tokens are not part of the response text
        assert tok.eos_token not in r["response"] and tok.pad_token not in r["response"]


# --- reward_scores ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(corpus):
    """(prompt, response) pairs of clearly different lengths, in no length order."""
    p = corpus["prompts"]
    return [
        (p[0]["prompt"], "short"),
        (p[1]["prompt"], " ".join(corpus["sft"][2]["response"].split() * 3)),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": p[2]["prompt"]}], "ok"),
        (p[3]["prompt"], corpus["sft"][6]["response"]),
        (p[4]["prompt"], "a much longer reply that rambles on about music and space and recipes for a while"),
        (p[5]["prompt"], "x"),
    ]


def _scores(rm, tok, pairs, batch_size):
    return reward_scores(rm, tok, [p for p, _ in pairs], [r for _, r in pairs], batch_size=batch_size, max_length=128)


def test_reward_scores_independent_of_padding_and_order(rm, tok, scored):
    alone = [_scores(rm, tok, [pr], 1)[0] for pr in scored]
    assert len({round(s, 6) for s in alone}) == len(alone)  # distinct, so an order mix-up would show
    for batch_size in (2, 3, len(scored)):
        batched = _scores(rm, tok, scored, batch_size)
        assert batched == pytest.approx(alone, abs=1e-5)
    # Reversed input: results follow the input order, not the length-sorted batch order.
    assert _scores(rm, tok, scored[::-1], 4) == pytest.approx(alone[::-1], abs=1e-5)


def test_reward_score_is_last_token_of_rendered_turn(rm, tok, scored):
    prompt, response = scored[3]
    ids = tok(render_full(tok, prompt, response), add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id
    with torch.no_grad():
        ref = float(rm(input_ids=torch.tensor([ids])).logits[0, 0])
    assert _scores(rm, tok, [scored[3]], 1)[0] == pytest.approx(ref, abs=1e-5)


def test_grouped_scores_of_a_slice_equal_the_whole_bit_for_bit(rm, tok, scored):
    """group=g sorts by length within consecutive groups only: scoring whole groups on their own (a score shard)
    gives exactly the scores of one call over everything, to the last bit."""
    pairs = scored * 3  # 18 items, lengths mixed
    whole = reward_scores(rm, tok, [p for p, _ in pairs], [r for _, r in pairs], batch_size=2, max_length=128, group=6)
    parts = []
    for a in range(0, len(pairs), 6):
        part = pairs[a: a + 6]
        parts += reward_scores(rm, tok, [p for p, _ in part], [r for _, r in part], batch_size=2, max_length=128, group=6)
    assert parts == whole
    assert whole == pytest.approx(_scores(rm, tok, pairs, 2), abs=1e-5)  # and the same scores as ungrouped


def test_reward_scores_empty(rm, tok):
    assert reward_scores(rm, tok, [], [], batch_size=4, max_length=64) == []


# --- response_logprobs --------------------------------------------------------------------------


def _logprobs(model, tok, pairs, batch_size, max_length=128):
    return response_logprobs(model, tok, [p for p, _ in pairs], [r for _, r in pairs],
                             batch_size=batch_size, max_length=max_length)


def _manual_logprob(model, tok, prompt, response) -> float:
    prompt_ids = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    full = tok(render_full(tok, prompt, response), add_special_tokens=False)["input_ids"]
    assert full[: len(prompt_ids)] == prompt_ids and full[-1] == tok.eos_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    # token t (response tokens, EOS included) is predicted by the logits at position t - 1
    return sum(float(logp[t - 1, full[t]]) for t in range(len(prompt_ids), len(full)))


def test_response_logprobs_matches_manual(model, tok, scored):
    for prompt, response in (scored[0], scored[2], scored[3]):
        got = _logprobs(model, tok, [(prompt, response)], 1)[0]
        assert got == pytest.approx(_manual_logprob(model, tok, prompt, response), abs=1e-4)


def test_response_logprobs_independent_of_batch(model, tok, scored):
    alone = [_logprobs(model, tok, [pr], 1)[0] for pr in scored]
    assert all(v <= 0 and math.isfinite(v) for v in alone)
    assert len({round(v, 4) for v in alone}) == len(alone)
    for batch_size in (2, 4, len(scored)):
        assert _logprobs(model, tok, scored, batch_size) == pytest.approx(alone, abs=1e-4)
    assert _logprobs(model, tok, scored[::-1], 3) == pytest.approx(alone[::-1], abs=1e-4)


def test_response_logprobs_counts_the_eos(model, tok, corpus):
    """The closing EOS is part of the response: an empty response scores exactly log p(EOS | prompt)."""
    prompt = corpus["prompts"][0]["prompt"]
    prompt_ids = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids])).logits[0, -1].float()
    expected = float(torch.log_softmax(logits, -1)[tok.eos_token_id])
    assert _logprobs(model, tok, [(prompt, "")], 1)[0] == pytest.approx(expected, abs=1e-5)
