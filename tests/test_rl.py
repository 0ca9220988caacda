"""PPO arithmetic (alignloop.ml.rl), every expected value computed by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.ml.rl import (AdaptiveKL, FixedKL, RunningMoments, entropy_from_logits, gae, kl_k1, kl_k2, kl_k3,
                          normalise_scores, policy_loss, token_rewards, value_loss, whiten)

approx = lambda x, rel=1e-5: pytest.approx(x, rel=rel, abs=1e-6)  # noqa: E731


def test_gae_three_steps():
    # gamma 1, lam 0.95; rewards [0, 0, 1], values [0.5, 0.6, 0.7], next value after the end 0:
    # d2 = 1 - 0.7 = 0.3;  d1 = 0.7 - 0.6 = 0.1;  d0 = 0.6 - 0.5 = 0.1
    # A2 = 0.3;  A1 = 0.1 + 0.95 * 0.3 = 0.385;  A0 = 0.1 + 0.95 * 0.385 = 0.46575;  returns = A + V
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=0.95)
    assert adv[0].tolist() == approx([0.46575, 0.385, 0.3])
    assert ret[0].tolist() == approx([0.96575, 0.985, 1.0])


def test_gae_ignores_padding_and_discounts():
    # gamma 0.9, lam 1 on 2 real steps + 1 pad: d1 = 1 - 0.7 = 0.3; d0 = 0 + 0.9 * 0.7 - 0.5 = 0.13;
    # A1 = 0.3; A0 = 0.13 + 0.9 * 0.3 = 0.4; the pad (value 9, reward 5) contributes nothing.
    r = torch.tensor([[0.0, 1.0, 5.0]])
    v = torch.tensor([[0.5, 0.7, 9.0]])
    adv, ret = gae(r, v, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=1.0)
    assert adv[0].tolist() == approx([0.4, 0.3, 0.0])
    assert ret[0].tolist() == approx([0.9, 1.0, 0.0])


@pytest.mark.parametrize("ratio, adv, loss, clipfrac", [
    (1.1, 2.0, -2.2, 0.0),    # inside [0.8, 1.2]: plain -A r
    (1.5, 2.0, -2.4, 1.0),    # above, A > 0: max(-3.0, -2.4) = -2.4 (clipped)
    (0.5, -1.0, 0.8, 1.0),    # below, A < 0: max(0.5, 0.8) = 0.8 (clipped)
    (1.5, -1.0, 1.5, 0.0),    # above, A < 0: max(1.5, 1.2) = 1.5 (unclipped: no clipping of a worsening step)
    (0.5, 2.0, -1.0, 0.0),    # below, A > 0: max(-1.0, -1.6) = -1.0 (unclipped)
])
def test_clipped_policy_loss(ratio, adv, loss, clipfrac):
    old = torch.tensor([[-1.0]])
    got, frac = policy_loss(old + math.log(ratio), old, torch.tensor([[adv]]), torch.ones(1, 1), clip=0.2)
    assert float(got) == approx(loss) and float(frac) == clipfrac


def test_policy_loss_averages_over_real_tokens_only():
    # tokens: ratio 1 with A = 1 and 3 (loss -1, -3), one padded token with A = 100: mean -2
    logp = torch.zeros(1, 3)
    got, _ = policy_loss(logp, logp, torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]]), clip=0.2)
    assert float(got) == approx(-2.0)


def test_value_loss_clipped_and_not():
    # V 1.0, old 0.5, R 2.0, clip 0.2: (1-2)^2 = 1; V_clipped = 0.7, (0.7-2)^2 = 1.69; 0.5 * max = 0.845
    v, old, ret, m = torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1)
    assert float(value_loss(v, old, ret, m, clip=0.2)) == approx(0.845)
    assert float(value_loss(v, old, ret, m, clip=None)) == approx(0.5)


def test_kl_estimators_against_closed_forms():
    # p = [0.5, 0.3, 0.2], q = [0.4, 0.4, 0.2]:
    # KL(p||q) = 0.5 ln 1.25 + 0.3 ln 0.75 = 0.111572 - 0.086305 = 0.025267
    # E_p[k1] = KL exactly; E_p[k3] = sum(q) - 1 + KL = KL exactly;
    # E_p[k2] = 0.5 * (0.5 * ln(1.25)^2 + 0.3 * ln(0.75)^2) = 0.5 * (0.024897 + 0.024828) = 0.024862
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    kl = float((p * (p / q).log()).sum())
    assert kl == approx(0.025267, rel=1e-4)
    expect = lambda f: float((p * f(p.log(), q.log())).sum())  # noqa: E731  exact expectation under p
    assert expect(kl_k1) == approx(kl)
    assert expect(kl_k3) == approx(kl)
    assert expect(kl_k2) == approx(0.024862, rel=1e-4)
    assert abs(expect(kl_k2) - kl) / kl < 0.05  # close to KL for close distributions
    # per-sample signs: k1 can be negative, k2 and k3 never are
    lp, lq = p.log(), q.log()
    assert (kl_k1(lp, lq) < 0).any() and (kl_k2(lp, lq) >= 0).all() and (kl_k3(lp, lq) >= 0).all()


def test_adaptive_kl_controller():
    # beta 0.1, target 6, horizon 10000, 64 steps:
    # KL 9: error = min(9/6 - 1, 0.2) = 0.2 -> 0.1 * (1 + 0.2 * 64 / 10000) = 0.100128
    # KL 3: error = max(-0.5, -0.2) = -0.2 -> 0.099872;  KL 6.6: error 0.1 -> 0.1 * (1 + 0.1 * 0.0064) = 0.100064
    for kl, want in ((9.0, 0.100128), (3.0, 0.099872), (6.6, 0.100064)):
        c = AdaptiveKL(0.1, target=6.0, horizon=10000)
        c.update(kl, 64)
        assert c.value == approx(want, rel=1e-9)
    f = FixedKL(0.1)
    f.update(100.0, 64)
    assert f.value == 0.1


def test_token_rewards_penalise_kl_and_add_the_score_at_the_last_token():
    # coef 0.5; row 0: 3 tokens, kl [0.1, 0.2, 0.3], score 1 -> [-0.05, -0.1, -0.15 + 1]
    # row 1: 1 token, kl 0.5, score 2 -> [-0.25 + 2, 0, 0]
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    got = token_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    assert got.tolist() == [approx([-0.05, -0.1, 0.85]), approx([1.75, 0.0, 0.0])]


def test_whiten_over_real_tokens():
    # [1, 2, 3] (+ pad 100): mean 2, variance 2/3 -> [-1.224745, 0, 1.224745], pad 0
    got = whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert got[0].tolist() == approx([-1.224745, 0.0, 1.224745, 0.0], rel=1e-4)


def test_running_moments_and_score_normalisation():
    # 1..5 in two batches: mean 3, population variance 2
    m = RunningMoments()
    m.update(torch.tensor([1.0, 2.0, 3.0]))
    m.update(torch.tensor([4.0, 5.0]))
    assert m.mean == approx(3.0) and m.std == approx(math.sqrt(2.0))
    # (7 - 3) / sqrt 2 = 2.828 -> clipped to 2;  (2 - 3) / sqrt 2 = -0.7071
    assert normalise_scores(torch.tensor([7.0, 2.0]), m, clip=2.0).tolist() == approx([2.0, -0.707107])
    again = RunningMoments()
    again.load_state_dict(m.state_dict())
    assert (again.mean, again.std) == (m.mean, m.std)


def test_entropy_of_uniform_and_peaked():
    assert float(entropy_from_logits(torch.zeros(4))) == approx(math.log(4))
    assert float(entropy_from_logits(torch.tensor([100.0, 0.0, 0.0]))) < 1e-6


# --- PPO plumbing (alignloop.ml.ppo) -----------------------------------------------------------------------------------


def test_response_mask_keeps_tokens_up_to_and_including_the_first_eos():
    from alignloop.ml.ppo import response_mask

    eos = 2
    resp = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 2, 7, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    assert response_mask(resp, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_prompt_schedule_walks_a_seeded_shuffle_and_is_fixed_by_iteration():
    import random

    from alignloop.ml.ppo import prompt_schedule

    # 5 prompts, 3 per iteration: iteration 0 = first 3 of pass 0's shuffle, iteration 1 = its last 2 + pass 1's first
    p0, p1 = list(range(5)), list(range(5))
    random.Random(7 * 100_003 + 0).shuffle(p0)
    random.Random(7 * 100_003 + 1).shuffle(p1)
    assert prompt_schedule(5, 3, 0, seed=7) == p0[:3]
    assert prompt_schedule(5, 3, 1, seed=7) == p0[3:] + p1[:1]
    assert prompt_schedule(5, 3, 1, seed=7) == prompt_schedule(5, 3, 1, seed=7)  # what a resume relies on
    assert sorted(prompt_schedule(5, 5, 0, seed=7)) == list(range(5))  # a pass covers every prompt once
    assert prompt_schedule(2, 5, 0, seed=1)[:2] != [] and len(prompt_schedule(2, 5, 0, seed=1)) == 5  # batch > prompts


def test_the_kl_guard_snapshot_holds_only_what_training_changes_and_restores_it():
    import torch

    from alignloop.ml.ppo import restore_snapshot, trainable_snapshot

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)  # a frozen base, as under LoRA
    frozen, before = model[0].weight.clone(), model[1].weight.clone()
    snap = trainable_snapshot(model)
    assert set(snap) == {"1.weight", "1.bias"}  # no copy of the frozen layer
    with torch.no_grad():
        model[1].weight.add_(1.0)  # an optimiser step
    assert not torch.equal(model[1].weight, before)
    restore_snapshot(model, snap)
    assert torch.equal(model[1].weight, before) and torch.equal(model[0].weight, frozen)
    with torch.no_grad():
        model[1].weight.add_(1.0)
    assert torch.equal(snap["1.weight"], before)  # the snapshot is a copy, not a view of the live weights
