"""KL(policy || reference) as evaluate reports it: the per-token exact KL over the vocabulary (rl.kl_exact) summed
along responses sampled from the policy as it is, with the k1/k3 estimates beside it (inference.sequence_kl), and
the evaluate stage's choice of samples for it (temperature 1, top_p 1, whatever the quality samples used)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from alignloop.core.config import ArchConfig, EvaluateConfig
from alignloop.core.synthetic import make_corpus
from alignloop.ml.inference import sample, sequence_kl
from alignloop.ml.modeling import build_tiny_model, train_tokenizer
from alignloop.ml.rl import kl_exact

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kl_exact_hand_computed():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    # 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5 (-0.5877867) + 0.5 (1.6094379)
    assert kl_exact(p.log(), q.log()).item() == pytest.approx(0.5108256, abs=1e-6)
    assert kl_exact(q.log(), p.log()).item() == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5), abs=1e-6)
    # Logits are log-probabilities up to a constant; equal distributions give 0, never a rounding-negative value.
    assert kl_exact(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([11.0, 12.0, 13.0])).item() == 0.0
    batch = kl_exact(torch.randn(3, 5, 7), torch.randn(3, 5, 7))
    assert batch.shape == (3, 5) and (batch >= 0).all()


class ConstLM(torch.nn.Module):
    """A 'language model' whose next-token distribution is the same at every position: a sequence of T tokens drawn
    from it has KL(p || q) = T * KL(p_token || q_token) in closed form."""

    def __init__(self, probs: list[float]):
        super().__init__()
        self.logits = torch.tensor(probs).log()

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1).clone())


def test_sequence_kl_matches_the_closed_form():
    p, q = [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]
    token_kl = sum(a * math.log(a / b) for a, b in zip(p, q))
    steps, n = 5, 4000
    gen = torch.Generator().manual_seed(0)
    resp = torch.multinomial(torch.tensor(p), n * steps, replacement=True, generator=gen).view(n, steps).tolist()
    prompts = [[1] * (1 + i % 3) for i in range(n)]  # prompts of different lengths in one batch
    out = sequence_kl(ConstLM(p), ConstLM(q), prompts, resp, pad_id=0, batch_size=64)
    # The exact estimate has no sampling noise here: every sample gives the true KL.
    assert all(x["exact"] == pytest.approx(steps * token_kl, rel=1e-5) for x in out)
    # k1 and k3 are unbiased for the same value: their means land within 4 standard errors of it.
    for est in ("k1", "k3"):
        vals = [x[est] for x in out]
        m = sum(vals) / n
        se = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1) / n)
        assert abs(m - steps * token_kl) < 4 * se, (est, m, steps * token_kl, se)
    assert min(x["k3"] for x in out) >= 0 and min(x["k1"] for x in out) < 0  # k1 can go negative per sample


@pytest.fixture(scope="module")
def tok():
    corpus = make_corpus(num_prompts=40, sft_per_prompt=2, pairs_per_prompt=1, annotator_temperature=0.5,
                         good_demo_fraction=0.35, seed=0)
    return train_tokenizer([r["prompt"] for r in corpus["prompts"]] + [r["response"] for r in corpus["sft"]], 300), corpus


@pytest.fixture(scope="module")
def models(tok):
    arch = ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300)
    return build_tiny_model(arch, tok[0], max_length=64, seed=0), build_tiny_model(arch, tok[0], max_length=64, seed=1)


def _rows(model, tokenizer, corpus, **kw):
    prompts = [(r["id"], r["prompt"]) for r in corpus["prompts"][:6]]
    return sample(model, tokenizer, prompts, n=3, max_new_tokens=12, batch_size=4, seed=7, max_prompt_tokens=48,
                  with_ids=True, **{"temperature": 1.0, "top_p": 1.0, **kw})


def test_sequence_kl_on_sampled_ids_is_padding_and_order_free_and_zero_against_itself(tok, models):
    tokenizer, corpus = tok
    policy, ref = models
    rows = _rows(policy, tokenizer, corpus)
    assert all(r["response_ids"] and r["prompt_ids"] for r in rows)
    args = ([r["prompt_ids"] for r in rows], [r["response_ids"] for r in rows])
    batched = sequence_kl(policy, ref, *args, pad_id=tokenizer.pad_token_id, batch_size=8)
    single = sequence_kl(policy, ref, *args, pad_id=tokenizer.pad_token_id, batch_size=1)
    for a, b in zip(batched, single):
        assert a == pytest.approx(b, abs=1e-4)
    assert all(x["exact"] > 0 for x in batched)  # two different random models
    same = sequence_kl(policy, policy, *args, pad_id=tokenizer.pad_token_id, batch_size=8)
    assert all(x == {"exact": 0.0, "k1": 0.0, "k3": 0.0} for x in same)


def test_evaluation_temperature_does_not_change_the_kl(tok, models):
    """evaluate.temperature 0.7 used to be scored as if the samples came from the policy itself (KL could come out
    negative): the KL samples are now drawn at temperature 1 whatever the quality samples use."""
    from alignloop.pipeline.stages.evaluate import kl_samples

    tokenizer, corpus = tok
    policy, ref = models
    prompts = [{"id": r["id"], "prompt": r["prompt"]} for r in corpus["prompts"][:6]]
    found = {}
    for temperature in (1.0, 0.7):
        e = EvaluateConfig(temperature=temperature, samples_per_prompt=3, kl_samples_per_prompt=3, max_new_tokens=12,
                           batch_size=4, seed=7)
        params = SimpleNamespace(evaluate=e, model=SimpleNamespace(max_length=60))
        quality = _rows(policy, tokenizer, corpus, temperature=temperature)
        kl_rows = kl_samples(policy, tokenizer, prompts, params, quality)
        assert (kl_rows is quality) == (temperature == 1.0)  # reused only when drawn from the policy as it is
        out = sequence_kl(policy, ref, [r["prompt_ids"] for r in kl_rows], [r["response_ids"] for r in kl_rows],
                          pad_id=tokenizer.pad_token_id, batch_size=8)
        found[temperature] = [x["exact"] for x in out]
    assert found[0.7] == pytest.approx(found[1.0], abs=1e-5)
    assert min(found[0.7]) >= 0
