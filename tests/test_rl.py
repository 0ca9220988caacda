"""PPO arithmetic (alignloop.ml.rl), every expected value computed by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.ml.rl import (AdaptiveKL, FixedKL, RunningMoments, discounted_returns, entropy_from_logits, gae,
                          group_mean_baseline, kl_k1, kl_k2, kl_k3, normalise_scores, policy_loss,
                          reinforce_pp_advantages, token_rewards, value_loss, whiten)

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


# --- REINFORCE++ -------------------------------------------------------------------------------------------------------


def test_discounted_returns_sum_the_rewards_to_go_and_ignore_padding():
    # gamma 0.5; row 0: rewards [1, 2, 4] -> G2 = 4, G1 = 2 + 0.5 * 4 = 4, G0 = 1 + 0.5 * 4 = 3
    # row 1: 2 real tokens [0, 8] + a pad holding 100 -> G1 = 8, G0 = 0 + 0.5 * 8 = 4, pad 0 (and never counted)
    r = torch.tensor([[1.0, 2.0, 4.0], [0.0, 8.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert discounted_returns(r, mask, gamma=0.5).tolist() == [approx([3.0, 4.0, 4.0]), approx([4.0, 8.0, 0.0])]
    # gamma 1: plain sums of what is left
    assert discounted_returns(r, mask, gamma=1.0).tolist() == [approx([7.0, 6.0, 4.0]), approx([8.0, 8.0, 0.0])]


def test_group_mean_baseline_centres_each_prompts_group():
    # groups of 3: [1, 2, 3] (mean 2) -> [-1, 0, 1];  [0, 0, 3] (mean 1) -> [-1, -1, 2]
    got = group_mean_baseline(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0]), 3)
    assert got.tolist() == approx([-1.0, 0.0, 1.0, -1.0, -1.0, 2.0])
    with pytest.raises(ValueError, match="groups of 4"):
        group_mean_baseline(torch.zeros(6), 4)


# Two prompts x three responses, contiguous per prompt (A A A B B B), 2 response tokens, kl_coef 0.5, gamma 1.
# Rows 1 and 4 are one token long: their second position is padding (kl 9 there must not count).
RPP_SCORES = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0])
RPP_KL = torch.tensor([[0.2, 0.4], [0.2, 9.0], [0.0, 0.0], [0.4, 0.2], [0.0, 9.0], [0.2, 0.2]])
RPP_MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])


def test_reinforce_pp_advantages_by_hand():
    # per-token reward -0.5 * kl, score on the last real token; returns = reward to go (gamma 1):
    #   row 0 (s 1): r [-0.1, -0.2 + 1 = 0.8]   -> G [0.7, 0.8]
    #   row 1 (s 2): r [-0.1 + 2 = 1.9]         -> G [1.9]
    #   row 2 (s 3): r [0, 3]                   -> G [3, 3]
    #   row 3 (s 0): r [-0.2, -0.1]             -> G [-0.3, -0.1]
    #   row 4 (s 0): r [0]                      -> G [0]
    #   row 5 (s 3): r [-0.1, -0.1 + 3 = 2.9]   -> G [2.8, 2.9]
    # over the 10 real tokens: mean 14.7 / 10 = 1.47; deviations -0.77 -0.67 0.43 1.53 1.53 -1.77 -1.57 -1.47 1.33
    # 1.43, squares sum 17.481, variance 1.7481, std 1.322157; A = (G - 1.47) / 1.322157:
    #   0.7 -> -0.582382, 0.8 -> -0.506748, 1.9 -> 0.325226, 3 -> 1.157200, -0.3 -> -1.338721, -0.1 -> -1.187453,
    #   0 -> -1.111819, 2.8 -> 1.005932, 2.9 -> 1.081566
    adv = reinforce_pp_advantages(RPP_SCORES, RPP_KL, RPP_MASK, kl_coef=0.5, gamma=1.0)
    assert adv.tolist() == [approx([-0.582382, -0.506748], rel=1e-5), approx([0.325226, 0.0], rel=1e-5),
                            approx([1.1572, 1.1572], rel=1e-5), approx([-1.338721, -1.187453], rel=1e-5),
                            approx([-1.111819, 0.0], rel=1e-5), approx([1.005932, 1.081566], rel=1e-5)]
    real = adv[RPP_MASK.bool()]
    assert float(real.mean()) == approx(0.0) and float(real.std(unbiased=False)) == approx(1.0)


def test_reinforce_pp_baseline_advantages_by_hand():
    # group means: A [1, 2, 3] -> 2, B [0, 0, 3] -> 1; centred scores [-1, 0, 1, -1, -1, 2]; then as above:
    #   row 0: r [-0.1, -0.2 - 1 = -1.2]        -> G [-1.3, -1.2]
    #   row 1: r [-0.1 + 0]                     -> G [-0.1]
    #   row 2: r [0, 1]                         -> G [1, 1]
    #   row 3: r [-0.2, -0.1 - 1 = -1.1]        -> G [-1.3, -1.1]
    #   row 4: r [0 - 1]                        -> G [-1]
    #   row 5: r [-0.1, -0.1 + 2 = 1.9]         -> G [1.8, 1.9]
    # mean -0.3 / 10 = -0.03; deviations -1.27 -1.17 -0.07 1.03 1.03 -1.27 -1.07 -0.97 1.83 1.93, squares sum 15.881,
    # variance 1.5881, std 1.260198; A = (G + 0.03) / 1.260198:
    #   -1.3 -> -1.007778, -1.2 -> -0.928425, -0.1 -> -0.055547, 1 -> 0.817332, -1.1 -> -0.849073, -1 -> -0.769720,
    #   1.8 -> 1.452152, 1.9 -> 1.531505
    adv = reinforce_pp_advantages(RPP_SCORES, RPP_KL, RPP_MASK, kl_coef=0.5, gamma=1.0, group_size=3)
    assert adv.tolist() == [approx([-1.007778, -0.928425], rel=1e-5), approx([-0.055547, 0.0], rel=1e-5),
                            approx([0.817332, 0.817332], rel=1e-5), approx([-1.007778, -0.849073], rel=1e-5),
                            approx([-0.76972, 0.0], rel=1e-5), approx([1.452152, 1.531505], rel=1e-5)]


def test_reinforce_pp_baseline_ignores_a_constant_added_to_one_prompts_scores():
    # +5 on prompt B's three scores moves B's group mean by 5 too: the centred scores, hence the advantages, stay.
    # Without the baseline the same shift changes them (B's responses all look better).
    shifted = RPP_SCORES + torch.tensor([0.0, 0.0, 0.0, 5.0, 5.0, 5.0])
    base = reinforce_pp_advantages(RPP_SCORES, RPP_KL, RPP_MASK, kl_coef=0.5, gamma=1.0, group_size=3)
    moved = reinforce_pp_advantages(shifted, RPP_KL, RPP_MASK, kl_coef=0.5, gamma=1.0, group_size=3)
    assert torch.allclose(base, moved, atol=1e-6)
    plain = reinforce_pp_advantages(RPP_SCORES, RPP_KL, RPP_MASK, kl_coef=0.5, gamma=1.0)
    assert not torch.allclose(plain, reinforce_pp_advantages(shifted, RPP_KL, RPP_MASK, kl_coef=0.5, gamma=1.0))


@pytest.mark.parametrize("group_size", [None, 3])
def test_reinforce_pp_advantages_are_zero_on_padding(group_size):
    # whatever the pads hold (kl 9 here, and a row that is all padding but one token), their advantage is 0
    adv = reinforce_pp_advantages(RPP_SCORES, RPP_KL, RPP_MASK, kl_coef=0.5, gamma=0.9, group_size=group_size)
    assert adv[~RPP_MASK.bool()].tolist() == [0.0, 0.0]
    assert (adv[RPP_MASK.bool()] != 0).all()


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


# --- the loop on a tiny random model (alignloop.ml.ppo.PPOTrainer) -----------------------------------------------------

PROMPTS = ["name a colour", "count to three", "say hello", "pick a fruit"]


@pytest.fixture(scope="module")
def tiny_lm():
    from alignloop.core.config import ArchConfig
    from alignloop.ml.modeling import build_tiny_model, train_tokenizer

    tok = train_tokenizer(PROMPTS + ["red green blue", "one two three", "hello there", "apple pear plum"], 300)
    arch = ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300)
    return tok, lambda seed: build_tiny_model(arch, tok, max_length=64, seed=seed)


def _loop_cfg(**kw):
    from types import SimpleNamespace

    from alignloop.core.config import PPOConfig

    c = PPOConfig(**{"iterations": 2, "rollout_prompts": 2, "max_new_tokens": 6, "ppo_epochs": 1,
                     "minibatch_size": 3, "lr": 1e-3, "checkpoint_every": 0, **kw})
    return SimpleNamespace(**c.model_dump(), max_prompt_tokens=64 - c.max_new_tokens)


def _char_score(groups: list):
    """A reward that varies between responses (sum of character codes mod 7), recording each call's prompts."""
    def score(prompts, texts):
        groups.append(list(prompts))
        return [float(sum(map(ord, t)) % 7) for t in texts]
    return score


@pytest.mark.usefixtures("one_thread")
def test_reinforce_pp_baseline_trains_without_a_value_model_and_its_checkpoint_round_trips(tiny_lm, tmp_path):
    from alignloop.ml.ppo import PPOTrainer, train

    tok, build = tiny_lm
    cfg = _loop_cfg(samples_per_prompt=3, baseline="group_mean")
    calls: list = []
    policy = build(0)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer = PPOTrainer(policy, build(0), None, tok, cfg, _char_score(calls), seed=3, advantage="reinforce_pp")
    assert trainer.value is None and trainer.opt_v is None
    assert train(trainer, PROMPTS, cfg, None, log=lambda *_: None) == {"iterations": 2, "stopped": ""}
    # each iteration: 2 prompts x 3 responses, each prompt's three next to each other (the baseline's groups)
    assert [len(c) for c in calls] == [6, 6]
    assert all(c[0] == c[1] == c[2] != c[3] == c[4] == c[5] for c in calls)
    assert any(not torch.equal(before[n], p) for n, p in policy.named_parameters())  # the policy learned
    assert "vf_loss" not in trainer.history[-1] and {"pg_loss", "clipfrac", "entropy"} <= set(trainer.history[-1])

    trainer.save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "value").exists()
    assert "opt_v" not in torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    again = PPOTrainer(build(1), build(0), None, tok, cfg, _char_score([]), seed=3, advantage="reinforce_pp")
    again.load(tmp_path / "ckpt")
    assert again.iteration == 2 and again.history == trainer.history
    assert all(torch.equal(p, q) for p, q in zip(policy.state_dict().values(), again.policy.state_dict().values()))
    assert str(again.opt_pi.state_dict()["state"]) == str(trainer.opt_pi.state_dict()["state"])


@pytest.mark.usefixtures("one_thread")
def test_ppo_keeps_its_value_model_and_checkpoint_layout_with_several_samples_per_prompt(tiny_lm, tmp_path):
    from transformers import LlamaConfig, LlamaForTokenClassification

    from alignloop.ml.ppo import PPOTrainer

    tok, build = tiny_lm
    policy = build(0)
    conf = {k: v for k, v in policy.config.to_dict().items() if k not in ("id2label", "label2id")}
    value = LlamaForTokenClassification(LlamaConfig(**conf, num_labels=1))
    cfg = _loop_cfg(samples_per_prompt=2, iterations=1)
    calls: list = []
    trainer = PPOTrainer(policy, build(0), value, tok, cfg, _char_score(calls), seed=3)
    out = trainer.step(PROMPTS[:2])
    assert [len(c) for c in calls] == [4] and "vf_loss" in out
    trainer.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "value").is_dir() and "opt_v" in torch.load(tmp_path / "ckpt" / "state.pt",
                                                                             weights_only=True)
    # a PPO checkpoint does not resume a REINFORCE++ run (nor the other way round)
    rpp = PPOTrainer(build(0), build(0), None, tok, cfg, _char_score([]), seed=3, advantage="reinforce_pp")
    with pytest.raises(RuntimeError, match="value model"):
        rpp.load(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="needs a value model"):
        PPOTrainer(build(0), build(0), None, tok, cfg, _char_score([]), seed=3)


def test_the_ppo_module_runs_the_stage_its_round_algo_names(tmp_path):
    # One module, two stages (ppo_<r>, reinforce_pp_<r> with --reinforce-pp): a command that does not match the
    # round's algo stops with the fix before loading anything.
    from argparse import Namespace

    from alignloop.core.config import ConfigError, load_params
    from alignloop.pipeline.stages.ppo import SPECS, run

    assert [s.name for s in SPECS] == ["ppo", "reinforce_pp"] and SPECS[1].args == "--reinforce-pp"
    path = tmp_path / "params.yaml"
    path.write_text("experiment: t\nrounds:\n  p1: {algo: ppo, prev: sft}\n  q1: {algo: reinforce_pp, prev: sft}\n"
                    "  d1: {algo: dpo, prev: sft}\n")
    params = load_params(path)
    for r, flag, stage in (("p1", True, "ppo_p1"), ("q1", False, "reinforce_pp_q1"), ("d1", False, "dpo_d1")):
        with pytest.raises(ConfigError, match=f"runs its stage {stage}"):
            run(params, Namespace(round=r, reinforce_pp=flag))
