"""PPO's arithmetic as small pure functions over tensors: KL estimators, per-token rewards, GAE, whitening, the
clipped policy and value losses, the KL controllers, and REINFORCE++'s critic-free advantages.

Shapes: ``[batch, T]`` over response tokens, with ``mask`` 1 on real response tokens (up to and including EOS)
and 0 on padding. Written by hand because TRL 1.16 has no PPO trainer; the formulas follow Schulman et al.
(PPO, GAE), Ziegler et al. (KL-penalised reward, adaptive controller) and "Secrets of RLHF Part I" (PPO-max:
reward normalisation and clipping, advantage whitening, value clipping); REINFORCE++ follows Hu 2025
(arXiv 2501.03262) and OpenRLHF's ``reinforce`` / ``reinforce_baseline`` advantage estimators.
"""

from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


# --- KL estimators (http://joschu.net/blog/kl-approx.html), per token, samples drawn from the policy -------------


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """log p - log q: unbiased for KL(p || q), high variance, can be negative per token."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(log p - log q)^2 / 2: biased, low variance, >= 0; its expectation matches KL to second order."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(q/p - 1) - log(q/p): unbiased for KL(p || q) and >= 0 per token."""
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_exact(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Per position, the KL between the two next-token distributions over the whole vocabulary:
    sum_v p(v) (log p(v) - log q(v)), p = softmax(logits), q = softmax(ref_logits). Summed along a sequence sampled
    from p it is an unbiased estimate of the sequence-level KL(p || q) (chain rule) with less variance than k1/k3,
    and it is never negative (tiny negative float rounding is clamped to 0)."""
    logp, ref_logp = torch.log_softmax(logits.float(), -1), torch.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - ref_logp)).sum(-1).clamp(min=0.0)


# --- rewards ---------------------------------------------------------------------------------------------------------


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token reward: ``-kl_coef * kl`` on every response token, plus the sequence's ``score`` on its last one."""
    rewards = -kl_coef * kl * mask
    last = mask.sum(dim=1).long() - 1  # index of each row's last real token
    rows = torch.arange(mask.shape[0])
    rewards[rows, last.clamp(min=0)] += score * (last >= 0)
    return rewards


class RunningMoments:
    """Running mean/std of all scores seen (Chan et al. parallel update): reward normalisation across batches."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, xs: torch.Tensor) -> None:
        n = xs.numel()
        if n == 0:
            return
        b_mean = float(xs.mean())
        b_m2 = float(((xs - b_mean) ** 2).sum())
        delta, total = b_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += b_m2 + delta ** 2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


def normalise_scores(score: torch.Tensor, moments: RunningMoments, clip: float | None) -> torch.Tensor:
    """(score - running mean) / running std, clipped to [-clip, clip] (PPO-max)."""
    out = (score - moments.mean) / max(moments.std, 1e-8)
    return out.clamp(-clip, clip) if clip else out


# --- advantages ----------------------------------------------------------------------------------------------------


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; the episode ends after the last real token (next value 0).

    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1};  returns = A + V.
    """
    values = values * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        next_v = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, adv + values


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries (population variance)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


# --- REINFORCE++ (no value model) ------------------------------------------------------------------------------------


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go over the response tokens; the episode ends after the last real token, padding is 0.

    G_t = r_t + gamma * G_{t+1},  G_T = 0  (i.e. G_t = sum_{s >= t} gamma^(s-t) r_s over real tokens).
    """
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        out[:, t] = running
    return out


def group_mean_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each score minus the mean score of its prompt's group; ``scores`` holds each prompt's ``group_size``
    responses contiguously ([p0 s0, p0 s1, ..., p1 s0, ...]).

    s'_{i,j} = s_{i,j} - (1/k) sum_j' s_{i,j'},  k = group_size.
    """
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    grouped = scores.view(-1, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)


def reinforce_pp_advantages(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float,
                            gamma: float, group_size: int | None = None) -> torch.Tensor:
    """REINFORCE++ advantages: KL-penalised per-token rewards, their discounted returns, normalised over every
    response token of the batch (no critic). With ``group_size`` (REINFORCE++-baseline) each score first loses its
    prompt's group mean.

    s'   = s - mean of its group  (baseline only; else s' = s)
    r_t  = -kl_coef * KL_t + [t = last] * s'                  (token_rewards)
    G_t  = r_t + gamma * G_{t+1}                              (discounted_returns)
    A_t  = (G_t - mean(G)) / std(G), mean and std over all real tokens of the batch   (whiten)
    """
    if group_size is not None:
        scores = group_mean_baseline(scores, group_size)
    returns = discounted_returns(token_rewards(scores, kl, mask, kl_coef), mask, gamma)
    return whiten(returns, mask)


# --- losses ----------------------------------------------------------------------------------------------------------


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate: mean of max(-A r, -A clip(r, 1-eps, 1+eps)), r = exp(logp - old_logp). Also the clip
    fraction (share of tokens where the clipped term is the larger)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None) -> torch.Tensor:
    """0.5 * mean of max((V - R)^2, (V_clipped - R)^2), V_clipped = old + clip(V - old, -c, c); no clip if None."""
    err = (values - returns) ** 2
    if clip is not None:
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.maximum(err, (v_clipped - returns) ** 2)
    return 0.5 * masked_mean(err, mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at every position."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# --- KL controllers --------------------------------------------------------------------------------------------------


class FixedKL:
    def __init__(self, value: float):
        self.value = value

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKL:
    """Ziegler et al. 2019: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)."""

    def __init__(self, value: float, target: float, horizon: int):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
