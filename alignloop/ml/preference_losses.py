"""Preference losses TRL's DPOTrainer does not have, as small pure functions over tensors (no model code).

- SPPO's soft-label square loss (Wu et al. 2024, arXiv 2405.00675). TRL's ``sppo_hard`` is only the hard-label
  case P_w = 1, P_l = 0; SPPO proper regresses each log-ratio on the response's estimated win-rate.
- INPO's two-anchor square loss (Zhang et al. 2024, arXiv 2407.00617): previous iterate and the reference.
- LiPO-λ's listwise loss (Liu et al. 2024, arXiv 2402.01878): LambdaRank-weighted pair-logistic over a ranked list.
- DNO's loss (Rosset et al. 2024, arXiv 2404.03715), which *is* DPO's sigmoid loss with the previous iterate as
  the reference; it is kept here so the self-play rounds (SPPO, DNO, INPO) share one training path, and its test
  checks it against the DPO formula.

Inputs are per-sequence summed log-probs: ``policy_*`` from the model being trained (with grad), ``iterate_*`` from
the previous round's policy π_t and ``ref_*`` from the frozen reference π_ref (both without grad), shape ``(B,)``
(``(B, K)`` for LiPO). Every function returns per-example losses ``(B,)``; the caller takes the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sppo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, iterate_w: torch.Tensor, iterate_l: torch.Tensor,
              p_w: torch.Tensor | float, p_l: torch.Tensor | float, eta: float) -> torch.Tensor:
    """SPPO (arXiv 2405.00675, Alg. 1 eq. 4.7; reference code uclaml/SPPO, ``loss_type == "sppo"``)::

        a = log π_θ(y_w) - log π_t(y_w),   b = log π_θ(y_l) - log π_t(y_l)
        loss = ((a - η (P̂_w - 1/2))² + (b - η (P̂_l - 1/2))²) / 2

    ``p_w`` / ``p_l`` are the estimated win-rates P̂(y ≻ π_t | x) of the chosen and rejected response
    (:func:`alignloop.core.selection.win_rates`); π_t is the previous round's policy. Each log-ratio is pulled
    towards η (P̂ - 1/2): up for responses that beat the current policy, down for those that lose to it.
    With P̂_w = 1, P̂_l = 0 and η = 1/β this is half of TRL's ``sppo_hard``.
    """
    a = policy_w - iterate_w
    b = policy_l - iterate_l
    return ((a - eta * (p_w - 0.5)) ** 2 + (b - eta * (p_l - 0.5)) ** 2) / 2


def dno_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, iterate_w: torch.Tensor, iterate_l: torch.Tensor,
             beta: float) -> torch.Tensor:
    """DNO's practical batched on-policy update (arXiv 2404.03715, Alg. 2)::

        loss = -log σ(β ((log π_θ(y_w) - log π_t(y_w)) - (log π_θ(y_l) - log π_t(y_l))))

    i.e. DPO's sigmoid loss with the previous iterate π_t as the reference; the pairs are chosen by win-rate
    with a margin filter (:func:`alignloop.core.selection.winrate_pair`).
    """
    logits = (policy_w - iterate_w) - (policy_l - iterate_l)
    return -F.logsigmoid(beta * logits)


def inpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, iterate_w: torch.Tensor, iterate_l: torch.Tensor,
              ref_w: torch.Tensor, ref_l: torch.Tensor, eta: float, tau: float) -> torch.Tensor:
    """INPO (arXiv 2407.00617)::

        h = (log π_θ(y_w) - log π_θ(y_l)) - ητ (log π_ref(y_w) - log π_ref(y_l))
            - (1 - ητ) (log π_t(y_w) - log π_t(y_l))
        loss = (h - η/2)²

    It follows from the no-regret (online mirror descent) update π_{t+1} ∝ π_t^{1-ητ} π_ref^{ητ} exp(η P(y ≻ π_t))
    with IPO's square-loss trick for the unknown P. η is the step size, τ the KL-to-reference strength; ητ must lie
    in [0, 1] (the two anchors' geometric weights). ητ = 1 is IPO against π_ref with β = 1/η; τ = 0 is IPO
    against the previous iterate.
    """
    if eta <= 0:
        raise ValueError(f"INPO needs eta > 0, got {eta}")
    if not 0 <= eta * tau <= 1:
        raise ValueError(f"INPO needs eta * tau in [0, 1] (the weights of the two anchors), "
                         f"got {eta} * {tau} = {eta * tau}")
    w = eta * tau
    h = (policy_w - policy_l) - w * (ref_w - ref_l) - (1 - w) * (iterate_w - iterate_l)
    return (h - eta / 2) ** 2


def lipo_lambda_loss(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                     lambda_weights: bool = True) -> torch.Tensor:
    """LiPO-λ (arXiv 2402.01878, eq. 8), per list::

        loss_b = Σ_{(i, j) valid, ψ_i > ψ_j} Δ_ij · (-log σ(s_i - s_j))
        Δ_ij   = |G_i - G_j| · |1/D(τ_i) - 1/D(τ_j)|,   G = 2^ψ - 1,   D(τ) = log2(1 + τ)

    ``scores`` (B, K): s = β (log π_θ - log π_ref) per response, computed by the caller. ``labels`` (B, K): ψ in
    [0, 1], higher is better. ``mask`` (B, K) bool: True on real items (lists have different lengths; masked items
    take no part and get zero gradient). τ_i is the 1-based position of item i when the list's valid items are
    sorted by the current scores, descending (detached: LambdaRank's position; ties go to the lower index).
    With ``lambda_weights=False``, Δ_ij = 1: LiPO's pair-logistic ablation, i.e. DPO on every ordered pair.
    """
    if not (scores.shape == labels.shape == mask.shape) or scores.dim() != 2:
        raise ValueError(f"scores, labels and mask must all be (B, K), got {tuple(scores.shape)}, "
                         f"{tuple(labels.shape)}, {tuple(mask.shape)}")
    mask = mask.bool()
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    s = torch.where(mask, scores, zero)  # masked scores (maybe garbage) never reach the arithmetic or the gradient
    psi = torch.where(mask, labels.to(scores.dtype), zero)

    valid = mask[:, :, None] & mask[:, None, :] & (psi[:, :, None] > psi[:, None, :])      # (B, i, j)
    pair_loss = -F.logsigmoid(s[:, :, None] - s[:, None, :])                                 # (B, i, j)

    if lambda_weights:
        with torch.no_grad():
            sd = s.detach()
            k = sd.shape[1]
            idx = torch.arange(k, device=sd.device)
            # τ_i = 1 + #{valid j ranked above i}: a higher score, or an equal score at a lower index
            s_i, s_j = sd[:, :, None], sd[:, None, :]
            above = (s_j > s_i) | ((s_j == s_i) & (idx[None, :] < idx[:, None]))
            rank = 1 + (above & mask[:, None, :]).sum(dim=2).to(scores.dtype)                 # (B, i)
            gain = 2 ** psi - 1
            inv_d = 1 / torch.log2(1 + rank)
            delta = (gain[:, :, None] - gain[:, None, :]).abs() * (inv_d[:, :, None] - inv_d[:, None, :]).abs()
    else:
        delta = torch.ones_like(pair_loss)

    return torch.where(valid, delta * pair_loss, zero).sum(dim=(1, 2))
