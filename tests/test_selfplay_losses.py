"""Hand-computed tests: general-preference self-play building blocks (SPPO, DNO, INPO) and listwise LiPO-λ.

In the style of torchtune's DPO loss test: small tensors, every expected number worked out in the comments so a
reader can redo it. The coincidences with TRL's losses are checked against the formulas in TRL 1.16's
``DPOTrainer._compute_loss`` (not callable standalone: it needs a model forward), restated here and pinned to the
installed source text.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alignloop.core.selection import symmetrise, win_rates, winrate_pair
from alignloop.ml.preference_losses import dno_loss, inpo_loss, lipo_lambda_loss, sppo_loss


def t(*xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


# --- the worked example: 2 prompts x 3 responses, raw preference-model probabilities raw[i][j] = P(i > j) --------
# The diagonal is ignored (9.0 here to show it).
RAW1 = [[9.0, 0.8, 0.6],
        [0.4, 9.0, 0.3],
        [0.2, 0.9, 9.0]]
RAW2 = [[9.0, 0.5, 0.1],
        [0.7, 9.0, 0.4],
        [0.9, 0.6, 9.0]]
# P[i][j] = (raw[i][j] + 1 - raw[j][i]) / 2
# prompt 1: P01 = (0.8 + 1 - 0.4)/2 = 0.7, P10 = (0.4 + 1 - 0.8)/2 = 0.3
#           P02 = (0.6 + 1 - 0.2)/2 = 0.7, P20 = 0.3
#           P12 = (0.3 + 1 - 0.9)/2 = 0.2, P21 = (0.9 + 1 - 0.3)/2 = 0.8
P1 = [[0.5, 0.7, 0.7],
      [0.3, 0.5, 0.2],
      [0.3, 0.8, 0.5]]
# prompt 2: P01 = (0.5 + 1 - 0.7)/2 = 0.4, P10 = 0.6
#           P02 = (0.1 + 1 - 0.9)/2 = 0.1, P20 = 0.9
#           P12 = (0.4 + 1 - 0.6)/2 = 0.4, P21 = 0.6
P2 = [[0.5, 0.4, 0.1],
      [0.6, 0.5, 0.4],
      [0.9, 0.6, 0.5]]
# win-rates, mean over j != i:
# prompt 1: w0 = (0.7 + 0.7)/2 = 0.7, w1 = (0.3 + 0.2)/2 = 0.25, w2 = (0.3 + 0.8)/2 = 0.55 -> pair (0, 1), gap 0.45
# prompt 2: w0 = (0.4 + 0.1)/2 = 0.25, w1 = (0.6 + 0.4)/2 = 0.5, w2 = (0.9 + 0.6)/2 = 0.75 -> pair (2, 0), gap 0.5
WIN1, WIN2 = [0.7, 0.25, 0.55], [0.25, 0.5, 0.75]


def _matrix_approx(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == pytest.approx(w)


def test_symmetrise_win_rates_and_pairs_worked_example():
    p1, p2 = symmetrise(RAW1), symmetrise(RAW2)
    _matrix_approx(p1, P1)
    _matrix_approx(p2, P2)
    for p in (p1, p2):
        for i in range(3):
            assert p[i][i] == 0.5
            for j in range(3):
                assert p[i][j] + p[j][i] == pytest.approx(1.0, abs=1e-15)
    assert win_rates(p1) == pytest.approx(WIN1)
    assert win_rates(p2) == pytest.approx(WIN2)
    assert winrate_pair(win_rates(p1), 0.1) == (0, 1)
    assert winrate_pair(win_rates(p2), 0.1) == (2, 0)


def test_winrate_pair_margin_ties_usable_and_errors():
    assert winrate_pair(WIN1, 0.4) == (0, 1)            # gap 0.45 >= 0.4
    assert winrate_pair(WIN1, 0.5) is None              # gap 0.45 < 0.5: DNO's margin filter drops the prompt
    # ties: the first index wins, for both the best (0.7 at 1 and 2) and the worst (0.2 at 3 and 4)
    assert winrate_pair([0.5, 0.7, 0.7, 0.2, 0.2], 0.0) == (1, 3)
    assert winrate_pair([0.5, 0.5, 0.5], 0.0) is None   # all equal: no preference, even at margin 0
    # usable mask (e.g. empty responses): without response 0, best 2 (0.55) vs worst 1 (0.25), gap 0.3
    assert winrate_pair(WIN1, 0.1, usable=[False, True, True]) == (2, 1)
    assert winrate_pair(WIN1, 0.0, usable=[True, False, False]) is None   # one usable response
    assert winrate_pair([0.9], 0.0) is None
    with pytest.raises(ValueError, match="usable"):
        winrate_pair(WIN1, 0.0, usable=[True, True])
    with pytest.raises(ValueError, match="at least 2"):
        win_rates([[0.5]])
    with pytest.raises(ValueError, match="at least 2"):
        win_rates([])
    with pytest.raises(ValueError, match="square"):
        symmetrise([[0.5, 0.6], [0.4]])


# --- the selected pairs' losses, batched (prompt 1's pair (0, 1), prompt 2's pair (2, 0)) ------------------------
# made-up summed log-probs:           prompt 1   prompt 2
POLICY_W, POLICY_L = t(-10.0, -8.0), t(-12.0, -9.0)
ITERATE_W, ITERATE_L = t(-10.5, -8.0), t(-11.0, -9.5)
REF_W, REF_L = t(-11.0, -7.0), t(-11.5, -9.0)
# a = policy_w - iterate_w = (0.5, 0.0);  b = policy_l - iterate_l = (-1.0, 0.5)
P_W, P_L = t(WIN1[0], WIN2[2]), t(WIN1[1], WIN2[0])   # (0.7, 0.75), (0.25, 0.25)


def test_pair_losses_worked_example():
    # SPPO, eta = 2: targets eta*(p - 0.5)
    #   prompt 1: target_w = 2*0.2 = 0.4, target_l = 2*(-0.25) = -0.5
    #             ((0.5 - 0.4)^2 + (-1.0 + 0.5)^2) / 2 = (0.01 + 0.25) / 2 = 0.13
    #   prompt 2: target_w = 2*0.25 = 0.5, target_l = -0.5
    #             ((0.0 - 0.5)^2 + (0.5 + 0.5)^2) / 2 = (0.25 + 1.0) / 2 = 0.625
    sppo = sppo_loss(POLICY_W, POLICY_L, ITERATE_W, ITERATE_L, P_W, P_L, eta=2.0)
    assert sppo.shape == (2,)
    assert sppo.tolist() == pytest.approx([0.13, 0.625])

    # DNO, beta = 0.5: logits = a - b
    #   prompt 1: 0.5 - (-1.0) = 1.5 -> -log sigmoid(0.75)  = log(1 + e^-0.75) = 0.386871006...
    #   prompt 2: 0.0 - 0.5 = -0.5   -> -log sigmoid(-0.25) = log(1 + e^0.25)  = 0.825939419...
    dno = dno_loss(POLICY_W, POLICY_L, ITERATE_W, ITERATE_L, beta=0.5)
    assert dno.tolist() == pytest.approx([0.38687100611489994, 0.8259394198788436])

    # INPO, eta = 2, tau = 0.25 -> eta*tau = 0.5;  h = policy diff - 0.5 * ref diff - 0.5 * iterate diff
    #   prompt 1: policy diff -10 + 12 = 2.0, ref diff -11 + 11.5 = 0.5, iterate diff -10.5 + 11 = 0.5
    #             h = 2.0 - 0.25 - 0.25 = 1.5;  (1.5 - 2/2)^2 = 0.25
    #   prompt 2: policy diff -8 + 9 = 1.0, ref diff -7 + 9 = 2.0, iterate diff -8 + 9.5 = 1.5
    #             h = 1.0 - 1.0 - 0.75 = -0.75;  (-0.75 - 1)^2 = 3.0625
    inpo = inpo_loss(POLICY_W, POLICY_L, ITERATE_W, ITERATE_L, REF_W, REF_L, eta=2.0, tau=0.25)
    assert inpo.tolist() == pytest.approx([0.25, 3.0625])


def test_inpo_rejects_eta_tau_outside_unit_interval():
    args = (POLICY_W, POLICY_L, ITERATE_W, ITERATE_L, REF_W, REF_L)
    with pytest.raises(ValueError, match=r"eta \* tau"):
        inpo_loss(*args, eta=2.0, tau=1.0)     # 2 > 1
    with pytest.raises(ValueError, match=r"eta \* tau"):
        inpo_loss(*args, eta=2.0, tau=-0.1)    # -0.2 < 0
    with pytest.raises(ValueError, match="eta > 0"):
        inpo_loss(*args, eta=0.0, tau=0.0)
    inpo_loss(*args, eta=2.0, tau=0.5)         # exactly 1: fine
    inpo_loss(*args, eta=2.0, tau=0.0)         # exactly 0: fine


# --- the coincidences with TRL's losses -----------------------------------------------------------------------
# TRL 1.16, trl/trainer/dpo_trainer.py, DPOTrainer._compute_loss, with f_divergence_type "reverse_kl":
#   chosen_logratios = chosen_logps - ref_chosen_logps;  delta_score = chosen_logratios - rejected_logratios
#   "sigmoid":   -F.logsigmoid(self.beta * delta_score)
#   "ipo":       (ipo_delta - 1 / (2 * self.beta)) ** 2, ipo_delta = delta of the log-ratios each divided by its
#                completion's token count (so the formula below is TRL's for one-token completions)
#   "sppo_hard": (chosen_logratios - 0.5 / self.beta) ** 2 + (rejected_logratios + 0.5 / self.beta) ** 2
TRL_LINES = {
    "sigmoid": "per_sequence_loss = -F.logsigmoid(self.beta * delta_score)",
    "ipo": "per_sequence_loss = (ipo_delta - 1 / (2 * self.beta)) ** 2",
    "sppo_hard_w": "winner_margin_error = (chosen_logratios - 0.5 / self.beta) ** 2",
    "sppo_hard_l": "loser_margin_error = (rejected_logratios + 0.5 / self.beta) ** 2",
}

PW, PL = t(-3.0, -20.0, -5.5), t(-4.0, -18.0, -5.0)
RW, RL = t(-3.5, -21.0, -6.0), t(-3.0, -19.5, -4.0)
BETA = 0.1


def _trl_sigmoid(beta, pw, pl, rw, rl):
    return -F.logsigmoid(beta * ((pw - rw) - (pl - rl)))


def _trl_ipo(beta, pw, pl, rw, rl):
    return ((pw - rw) - (pl - rl) - 1 / (2 * beta)) ** 2


def _trl_sppo_hard(beta, pw, pl, rw, rl):
    return ((pw - rw) - 0.5 / beta) ** 2 + ((pl - rl) + 0.5 / beta) ** 2


def test_restated_trl_formulas_match_the_installed_trl_source():
    spec = importlib.util.find_spec("trl")   # finds the package without importing it (importing TRL takes seconds)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("trl is not installed")
    src = (Path(spec.submodule_search_locations[0]) / "trainer" / "dpo_trainer.py").read_text()
    missing = [k for k, line in TRL_LINES.items() if line not in src]
    assert not missing, (f"TRL's {missing} loss lines changed: re-read DPOTrainer._compute_loss and update the "
                         f"restated formulas (_trl_*) in this file")


def test_sppo_hard_labels_is_half_of_trl_sppo_hard():
    # p_w = 1, p_l = 0, eta = 1/beta: targets +-0.5/beta, and SPPO's /2 -> half of TRL's sum
    got = sppo_loss(PW, PL, RW, RL, 1.0, 0.0, eta=1 / BETA)
    # first element by hand: a = 0.5, b = -1.0, 0.5/beta = 5: ((0.5 - 5)^2 + (-1 + 5)^2)/2 = (20.25 + 16)/2 = 18.125
    assert got[0].item() == pytest.approx(18.125)
    assert torch.allclose(got, _trl_sppo_hard(BETA, PW, PL, RW, RL) / 2)


def test_dno_is_dpo_sigmoid_with_the_iterate_as_reference():
    got = dno_loss(PW, PL, RW, RL, beta=BETA)
    # first element: logits (0.5) - (-1.0) = 1.5 -> log(1 + e^-0.15) = 0.62041...
    assert got[0].item() == pytest.approx(math.log1p(math.exp(-0.15)))
    assert torch.allclose(got, _trl_sigmoid(BETA, PW, PL, RW, RL))


def test_inpo_special_cases_are_ipo():
    zeros = torch.zeros(3, dtype=torch.float64)
    eta = 1 / BETA   # 10
    # eta*tau = 1: the iterate drops out, h = DPO logits against the reference; (h - 5)^2 = IPO with beta = 1/eta
    junk_w, junk_l = t(7.0, -1.0, 3.0), t(-2.0, 4.0, 0.5)   # any iterate: weight 1 - eta*tau = 0
    got = inpo_loss(PW, PL, junk_w, junk_l, RW, RL, eta=eta, tau=1 / eta)
    # first element: logits 1.5 -> (1.5 - 5)^2 = 12.25
    assert got[0].item() == pytest.approx(12.25)
    assert torch.allclose(got, _trl_ipo(BETA, PW, PL, RW, RL))
    # tau = 0: the reference drops out, IPO against the previous iterate (here RW/RL play the iterate)
    got0 = inpo_loss(PW, PL, RW, RL, zeros + 123.0, zeros - 45.0, eta=eta, tau=0.0)
    assert torch.allclose(got0, _trl_ipo(BETA, PW, PL, RW, RL))


# --- LiPO-λ ------------------------------------------------------------------------------------------------------
# list 1: scores s = (1.0, 2.0, 0.0), labels psi = (1.0, 0.5, 0.0), all real
#   ranks by s descending: item 1 (2.0) -> 1, item 0 (1.0) -> 2, item 2 (0.0) -> 3
#   G = 2^psi - 1 = (1, sqrt2 - 1, 0) = (1, 0.414214, 0)
#   1/D(tau) = 1/log2(1 + tau): item 0 -> 1/log2(3) = 0.630930, item 1 -> 1, item 2 -> 1/2
#   pairs psi_i > psi_j: (0,1), (0,2), (1,2)
#     D01 = |1 - 0.414214| * |0.630930 - 1|   = 0.585786 * 0.369070 = 0.216196
#           -log sig(1 - 2) = log(1 + e)    = 1.313262
#     D02 = |1 - 0|        * |0.630930 - 0.5| = 0.130930
#           -log sig(1 - 0) = log(1 + e^-1) = 0.313262
#     D12 = |0.414214 - 0| * |1 - 0.5|        = 0.207107
#           -log sig(2 - 0) = log(1 + e^-2) = 0.126928
#   loss = 0.283922 + 0.041015 + 0.026288 = 0.351225;  unweighted: 1.313262 + 0.313262 + 0.126928 = 1.753451
# list 2: s = (0.5, 0.5, 9.0), psi = (0.0, 1.0, 1.0), the third item masked out (were it real it would rank first)
#   ranks: tie -> the lower index first: item 0 -> 1, item 1 -> 2;  G = (0, 1)
#   one pair (1,0): D10 = |1 - 0| * |1/log2(3) - 1| = 0.369070;  -log sig(0) = log 2 = 0.693147
#   loss = 0.255820;  unweighted: log 2
LIPO_S = t(1.0, 2.0, 0.0), t(0.5, 0.5, 9.0)
LIPO_PSI = t(1.0, 0.5, 0.0), t(0.0, 1.0, 1.0)
LIPO_MASK = torch.tensor([[True, True, True], [True, True, False]])


def _lipo_inputs():
    return torch.stack(LIPO_S).clone().requires_grad_(True), torch.stack(LIPO_PSI), LIPO_MASK


def test_lipo_lambda_worked_example():
    s, psi, mask = _lipo_inputs()
    r3 = 1 / math.log2(3)
    d01, d02, d12 = (2 - math.sqrt(2)) * (1 - r3), r3 - 0.5, (math.sqrt(2) - 1) * 0.5
    want1 = d01 * math.log1p(math.e) + d02 * math.log1p(math.exp(-1)) + d12 * math.log1p(math.exp(-2))
    want2 = (1 - r3) * math.log(2)
    assert (want1, want2) == pytest.approx((0.351225, 0.255820), abs=1e-6)   # the comment's numbers
    got = lipo_lambda_loss(s, psi, mask)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx([want1, want2])
    plain = lipo_lambda_loss(s, psi, mask, lambda_weights=False)
    assert plain.tolist() == pytest.approx([math.log1p(math.e) + math.log1p(math.exp(-1)) + math.log1p(math.exp(-2)),
                                            math.log(2)])


def test_lipo_masked_items_change_nothing_and_get_zero_gradient():
    s, psi, mask = _lipo_inputs()
    loss = lipo_lambda_loss(s, psi, mask)
    # garbage in the masked slot (nan score, out-of-range label) gives the same loss
    s2 = s.detach().clone()
    s2[1, 2] = float("nan")
    psi2 = psi.clone()
    psi2[1, 2] = 7.0
    assert torch.allclose(lipo_lambda_loss(s2, psi2, mask), loss.detach())
    loss.sum().backward()
    assert s.grad[1, 2].item() == 0.0
    assert torch.isfinite(s.grad).all()


def test_lipo_gradient_direction():
    s, psi, mask = _lipo_inputs()
    lipo_lambda_loss(s, psi, mask).sum().backward()
    g = s.grad
    assert g[0, 0] < 0 and g[0, 2] > 0      # list 1: best item pushed up, worst pushed down
    assert g[1, 1] < 0 and g[1, 0] > 0      # list 2: item 1 (psi 1) up, item 0 (psi 0) down
    # raising the best item's score (ranks unchanged: 1.1 stays between 2.0 and 0.0) lowers the loss
    with torch.no_grad():
        before = lipo_lambda_loss(s, psi, mask)[0]
        s_up = s.clone()
        s_up[0, 0] += 0.1
        assert lipo_lambda_loss(s_up, psi, mask)[0] < before


def test_lipo_pairwise_k2_is_dpo_sigmoid():
    # K = 2, lambda_weights off: one pair, -log sig(s_w - s_l), with s = beta * (policy - ref) -> DPO's sigmoid loss
    pw, pl, rw, rl = PW[:2], PL[:2], RW[:2], RL[:2]
    scores = torch.stack([BETA * (pw - rw), BETA * (pl - rl)], dim=1)          # (B=2, K=2)
    labels = t(1.0, 0.0).expand(2, 2)
    mask = torch.ones(2, 2, dtype=torch.bool)
    got = lipo_lambda_loss(scores, labels, mask, lambda_weights=False)
    assert torch.allclose(got, _trl_sigmoid(BETA, pw, pl, rw, rl))
    # the order of the items does not matter, the labels say which is better
    swapped = lipo_lambda_loss(scores.flip(1), labels.flip(1), mask, lambda_weights=False)
    assert torch.allclose(swapped, got)
    # equal labels: no pair, zero loss
    assert lipo_lambda_loss(scores, torch.full((2, 2), 0.5, dtype=torch.float64), mask).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        lipo_lambda_loss(scores, labels[:, :1], mask)


# --- gradient signs of the pair losses -----------------------------------------------------------------------------


def _grads(fn):
    pw, pl = POLICY_W.clone().requires_grad_(True), POLICY_L.clone().requires_grad_(True)
    fn(pw, pl).sum().backward()
    return pw.grad.tolist(), pl.grad.tolist()


def test_sppo_gradient_pulls_each_log_ratio_to_its_target():
    # d/dpolicy_w = a - eta*(p_w - 0.5), d/dpolicy_l = b - eta*(p_l - 0.5)
    # prompt 1: a = 0.5 above its target 0.4 -> +0.1 (descent lowers it); b = -1.0 below its target -0.5 -> -0.5
    #           (descent raises the rejected one: SPPO regresses on targets, it does not push the loser down forever)
    # prompt 2: a = 0.0 below 0.5 -> -0.5; b = 0.5 above -0.5 -> +1.0
    gw, gl = _grads(lambda pw, pl: sppo_loss(pw, pl, ITERATE_W, ITERATE_L, P_W, P_L, eta=2.0))
    assert gw == pytest.approx([0.1, -0.5])
    assert gl == pytest.approx([-0.5, 1.0])
    # at the targets the loss and its gradient vanish
    at_w, at_l = ITERATE_W + 2.0 * (P_W - 0.5), ITERATE_L + 2.0 * (P_L - 0.5)
    assert sppo_loss(at_w, at_l, ITERATE_W, ITERATE_L, P_W, P_L, eta=2.0).tolist() == pytest.approx([0.0, 0.0])


def test_dno_gradient_raises_chosen_and_lowers_rejected():
    # d/dpolicy_w = -beta * sigmoid(-beta * logits): prompt 1 -0.5*sig(-0.75) = -0.160847, prompt 2 -0.5*sig(0.25)
    gw, gl = _grads(lambda pw, pl: dno_loss(pw, pl, ITERATE_W, ITERATE_L, beta=0.5))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert gw == pytest.approx([-0.5 * sig(-0.75), -0.5 * sig(0.25)])
    assert gl == pytest.approx([0.5 * sig(-0.75), 0.5 * sig(0.25)])


def test_inpo_gradient_pulls_the_margin_to_eta_over_two():
    # d/dpolicy_w = 2 (h - eta/2) = -d/dpolicy_l
    # prompt 1: h = 1.5 > 1 -> +1.0 (the margin is already past eta/2: shrink it, IPO-style)
    # prompt 2: h = -0.75 < 1 -> 2 * (-1.75) = -3.5 (raise the chosen, lower the rejected)
    gw, gl = _grads(lambda pw, pl: inpo_loss(pw, pl, ITERATE_W, ITERATE_L, REF_W, REF_L, eta=2.0, tau=0.25))
    assert gw == pytest.approx([1.0, -3.5])
    assert gl == pytest.approx([-1.0, 3.5])
