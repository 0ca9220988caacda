"""PPO for a causal LM against a reward model, written out top to bottom (TRL 1.16 has no PPO trainer), and
REINFORCE++ (Hu 2025) as the same loop without a value model.

One iteration ("phase"):
  1. rollout   sample `samples_per_prompt` responses per prompt (each prompt's group contiguous) from the current
               policy (batched HF generate, KV cache);
  2. evaluate  log-probs under the policy (old) and the frozen reference, per-token values from the value model
               (PPO only), the reward model's score of each finished response (ensemble-aggregated like the score
               stage);
  3. reward    PPO: normalise and clip the scores with running moments; per-token reward = -beta * KL_t, plus the
               score on the last token (alignloop.ml.rl.token_rewards); beta from a fixed or adaptive KL controller;
  4. advantage PPO ("gae"): GAE over the response tokens, whitened across the batch. REINFORCE++ ("reinforce_pp"):
               the discounted return of those rewards, normalised over every response token of the batch, with
               (`baseline: group_mean`) each prompt's mean score over its group subtracted first
               (alignloop.ml.rl.reinforce_pp_advantages);
  5. optimise  `ppo_epochs` passes of shuffled minibatches: clipped policy loss (- entropy bonus) and, for PPO,
               clipped value loss, each model with its own AdamW; the passes stop early when the policy moved more
               than `target_kl` (approximate KL between old and new policy);
  6. guard     if the rollout KL to the reference exceeds `kl_limit`, training stops and the policy goes back to
               the last iteration whose rollouts were under it, so the saved policy respects the limit;
  7. checkpoint every `checkpoint_every` iterations: policy, value model (PPO), optimisers, controller, reward
               moments and RNG state, atomically; a killed stage resumes from the last checkpoint.
All the arithmetic is in alignloop.ml.rl (pure, hand-tested); this file is the loop and the tensors' plumbing.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alignloop.ml import rl


@dataclass
class Batch:
    """One rollout: ``seq`` = prompt (left-padded) + response tokens; per-token tensors cover the response part."""

    seq: torch.Tensor        # [B, P+T]
    attn: torch.Tensor       # [B, P+T]
    prompt_len: int          # P
    mask: torch.Tensor       # [B, T] 1 on response tokens up to and including EOS
    old_logp: torch.Tensor   # [B, T]
    ref_logp: torch.Tensor   # [B, T]
    values: torch.Tensor | None  # [B, T]; None without a value model (REINFORCE++)
    scores: torch.Tensor     # [B] raw reward-model scores
    texts: list[str]


def _positions(attn: torch.Tensor) -> torch.Tensor:
    # Left padding: real tokens count from 0, as generate() numbered them.
    return (attn.cumsum(-1) - 1).clamp(min=0)


def response_logprobs(model, seq, attn, prompt_len: int, temperature: float, with_entropy: bool = False):
    """log p(response token t | prefix) for each response position (and the entropy there)."""
    logits = model(input_ids=seq, attention_mask=attn, position_ids=_positions(attn)).logits
    logits = logits[:, prompt_len - 1:-1].float() / temperature  # position i predicts token i+1
    logp = torch.log_softmax(logits, dim=-1).gather(-1, seq[:, prompt_len:, None]).squeeze(-1)
    return (logp, rl.entropy_from_logits(logits)) if with_entropy else logp


def response_values(value_model, seq, attn, prompt_len: int):
    """V(state before response token t): the value head at the position that predicts token t."""
    out = value_model(input_ids=seq, attention_mask=attn, position_ids=_positions(attn)).logits[..., 0]
    return out[:, prompt_len - 1:-1].float()


def response_mask(resp: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row (all ones when there is none)."""
    is_eos = (resp == eos_id).int()
    after = (is_eos.cumsum(-1) - is_eos) > 0  # strictly after the first EOS
    return (~after).float()


@torch.no_grad()
def rollout(policy, ref, value_model, tokenizer, prompts: list, cfg, score_fn) -> Batch:
    from alignloop.ml.modeling import render_prompt

    policy.eval()
    if value_model is not None:
        value_model.eval()
    enc = tokenizer([render_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                    add_special_tokens=False, truncation=True, max_length=cfg.max_prompt_tokens).to(policy.device)
    out = policy.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=1.0, top_k=0,
                          max_new_tokens=cfg.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    p_len = enc["input_ids"].shape[1]
    resp = out[:, p_len:]
    mask = response_mask(resp, tokenizer.eos_token_id)
    attn = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    texts = [tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip() for r, m in zip(resp, mask)]
    return Batch(seq=out, attn=attn, prompt_len=p_len, mask=mask,
                 old_logp=response_logprobs(policy, out, attn, p_len, cfg.temperature),
                 ref_logp=response_logprobs(ref, out, attn, p_len, cfg.temperature),
                 values=response_values(value_model, out, attn, p_len) if value_model is not None else None,
                 scores=torch.tensor(score_fn(prompts, texts), dtype=torch.float32), texts=texts)


ADVANTAGES = ("gae", "reinforce_pp")  # PPO with its value model; REINFORCE++ without one


class PPOTrainer:
    """``advantage`` "gae": PPO, ``value_model`` required. "reinforce_pp": REINFORCE++, ``value_model`` None (its
    variant REINFORCE++-baseline is ``cfg.baseline == "group_mean"``)."""

    def __init__(self, policy, ref, value_model, tokenizer, cfg, score_fn, seed: int, advantage: str = "gae"):
        if advantage not in ADVANTAGES:
            raise ValueError(f"advantage {advantage!r}: one of {ADVANTAGES}")
        if (value_model is None) != (advantage == "reinforce_pp"):
            raise ValueError(f"advantage {advantage!r} " + ("needs a value model" if value_model is None
                                                            else "has no value model: pass value_model=None"))
        self.policy, self.ref, self.value, self.tok, self.cfg, self.score_fn = policy, ref, value_model, tokenizer, cfg, score_fn
        self.advantage = advantage
        self.ref.eval().requires_grad_(False)
        # No dropout anywhere: old log-probs and values are computed in eval mode, and the ratio must compare the
        # same function before and after the update (as OpenRLHF and TRL's PPO did). It also makes a resumed run
        # draw the same random numbers as an uninterrupted one.
        for m in [*policy.modules(), *(value_model.modules() if value_model is not None else ())]:
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        self.opt_pi = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.opt_v = (torch.optim.AdamW(value_model.parameters(), lr=cfg.value_lr, weight_decay=0.0)
                      if value_model is not None else None)
        self.kl_ctl = (rl.AdaptiveKL(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_controller == "adaptive"
                       else rl.FixedKL(cfg.kl_coef))
        self.moments = rl.RunningMoments()
        self.iteration = 0
        self.history: list[dict] = []
        self.stopped = ""
        self.seed = seed
        # Wall seconds of this process's iterations (not checkpointed): rollouts (generation, log-probs, scoring) and
        # the optimisation passes, for the generation vs training split the stage reports.
        self.seconds = {"rollout": 0.0, "update": 0.0}
        self._last_good = None
        torch.manual_seed(seed)

    # -- one iteration -------------------------------------------------------------------------------------------

    def step(self, prompts: list) -> dict:
        cfg = self.cfg
        # k responses per prompt, each prompt's k next to each other: REINFORCE++-baseline reads groups as
        # contiguous runs of k scores (rl.group_mean_baseline). For PPO, k > 1 just draws more responses.
        k = cfg.samples_per_prompt
        prompts = [p for p in prompts for _ in range(k)]
        t0 = time.perf_counter()
        b = rollout(self.policy, self.ref, self.value, self.tok, prompts, cfg, self.score_fn)
        self.seconds["rollout"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        kl = rl.KL_ESTIMATORS[cfg.kl_estimator](b.old_logp, b.ref_logp) * b.mask
        seq_kl = float(kl.sum(1).mean())  # mean over responses of the summed per-token KL to the reference
        if seq_kl > cfg.kl_limit:
            return {"kl_to_ref": seq_kl, "stop": True}
        self._last_good = trainable_snapshot(self.policy)  # what the guard goes back to if the next rollout is over

        self.moments.update(b.scores)
        if self.advantage == "gae":
            scores = rl.normalise_scores(b.scores, self.moments, cfg.reward_clip) if cfg.normalise_reward else b.scores
            rewards = rl.token_rewards(scores, kl, b.mask, self.kl_ctl.value)
            adv, returns = rl.gae(rewards, b.values, b.mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = rl.whiten(adv, b.mask)
        else:
            # REINFORCE++ takes the raw scores: normalise_reward / reward_clip (PPO-max's running moments, there to
            # keep the value model's targets at a steady scale) do not apply. With no critic to fit, the method's
            # own normalisation of the returns over all of the batch's tokens sets the scale every iteration; on
            # top of it a running-moment shift and scale of the score alone would mostly change the score's weight
            # against the KL penalty, which the paper and OpenRLHF leave at the raw score's (and with the group
            # baseline the shift cancels anyway). The normalisation is the method's: whiten_advantages is not read.
            group = k if cfg.baseline == "group_mean" else None
            adv = rl.reinforce_pp_advantages(b.scores, kl, b.mask, self.kl_ctl.value, cfg.gamma, group_size=group)
            returns = None

        self.policy.train()
        if self.value is not None:
            self.value.train()
        stats: dict[str, list[float]] = {"pg_loss": [], "vf_loss": [], "clipfrac": [], "entropy": [], "approx_kl": []}
        n = b.seq.shape[0]
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n)
            epoch_kl = []
            for i in range(0, n, cfg.minibatch_size):
                idx = order[i:i + cfg.minibatch_size]
                seq, attn, m = b.seq[idx], b.attn[idx], b.mask[idx]
                logp, ent = response_logprobs(self.policy, seq, attn, b.prompt_len, cfg.temperature, with_entropy=True)
                pg, clipfrac = rl.policy_loss(logp, b.old_logp[idx], adv[idx], m, cfg.clip_range)
                entropy = rl.masked_mean(ent, m)
                self.opt_pi.zero_grad()
                (pg - cfg.entropy_coef * entropy).backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.opt_pi.step()

                if self.value is not None:
                    vpred = response_values(self.value, seq, attn, b.prompt_len)
                    vf = rl.value_loss(vpred, b.values[idx], returns[idx], m, cfg.value_clip)
                    self.opt_v.zero_grad()
                    vf.backward()
                    torch.nn.utils.clip_grad_norm_(self.value.parameters(), cfg.max_grad_norm)
                    self.opt_v.step()
                    stats["vf_loss"].append(float(vf.detach()))

                with torch.no_grad():
                    approx = float(rl.masked_mean(rl.kl_k3(b.old_logp[idx], logp.detach()), m))
                for key, v in (("pg_loss", pg), ("clipfrac", clipfrac), ("entropy", entropy), ("approx_kl", approx)):
                    stats[key].append(float(v.detach()) if torch.is_tensor(v) else float(v))
                epoch_kl.append(approx)
            if cfg.target_kl and sum(epoch_kl) / len(epoch_kl) > cfg.target_kl:
                break  # the policy already moved far from the one that collected this batch

        self.seconds["update"] += time.perf_counter() - t0
        self.kl_ctl.update(seq_kl, n)
        self.iteration += 1
        out = {"iteration": self.iteration, "score": float(b.scores.mean()), "kl_to_ref": seq_kl,
               "kl_coef": self.kl_ctl.value, "response_tokens": float(b.mask.sum(1).mean()),
               **{k: sum(v) / len(v) for k, v in stats.items() if v}}
        self.history.append(out)
        return out

    def restore_last_good(self) -> None:
        if self._last_good is not None:
            restore_snapshot(self.policy, self._last_good)

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        from alignloop.core import files

        with files.atomic_dir(path) as tmp:
            self.policy.save_pretrained(tmp / "policy")
            if self.value is not None:  # REINFORCE++ has none: no value/ and no opt_v, PPO's layout otherwise
                self.value.save_pretrained(tmp / "value")
            # Optimiser/controller/RNG state: tensors and numbers only, loaded back with weights_only=True.
            state = {"opt_pi": self.opt_pi.state_dict(), "kl_coef": self.kl_ctl.value,
                     "moments": self.moments.state_dict(), "iteration": self.iteration, "history": self.history,
                     "rng": torch.get_rng_state()}
            if self.opt_v is not None:
                state["opt_v"] = self.opt_v.state_dict()
            torch.save(state, tmp / "state.pt")

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        if (self.value is not None) != (path / "value").is_dir():
            raise RuntimeError(f"{path}: checkpoint " + ("has no" if self.value is not None else "has a")
                               + f" value model, this run {'has' if self.value is not None else 'has none'} "
                               f"(ppo vs reinforce_pp); fix: delete {path} to start over")
        models = [(self.policy, "policy")] + ([(self.value, "value")] if self.value is not None else [])
        for model, sub in models:
            got = model.load_state_dict(load_file(path / sub / "model.safetensors"), strict=False)
            missing = [k for k in got.missing_keys if not k.endswith("lm_head.weight")]  # tied to the embeddings
            if missing or got.unexpected_keys:
                raise RuntimeError(f"{path / sub}: checkpoint does not match the model (missing {missing[:3]}, "
                                   f"unexpected {got.unexpected_keys[:3]}); fix: delete {path} to start over")
        state = torch.load(path / "state.pt", weights_only=True)
        self.opt_pi.load_state_dict(state["opt_pi"])
        if self.opt_v is not None:
            self.opt_v.load_state_dict(state["opt_v"])
        self.kl_ctl.value = state["kl_coef"]
        self.moments.load_state_dict(state["moments"])
        self.iteration, self.history = state["iteration"], state["history"]
        torch.set_rng_state(state["rng"])


def trainable_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters training can change: with LoRA the adapters only, not the frozen base (a
    whole-model copy per iteration is 15 GB of host memory at 7B); in full fine-tuning, all of them."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def restore_snapshot(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in snap:
                p.copy_(snap[n])


def prompt_schedule(num_prompts: int, batch: int, iteration: int, seed: int) -> list[int]:
    """Indices of iteration ``iteration``'s prompts: a seeded shuffle of all prompts, walked in order and reshuffled
    each pass, so every iteration's prompts are fixed by (seed, iteration) — the same after a resume."""
    out: list[int] = []
    start = iteration * batch
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), num_prompts)
        order = list(range(num_prompts))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        out.extend(order[offset: offset + batch - len(out)])
    return out


def train(trainer: PPOTrainer, prompts: list, cfg, ckpt_dir: Path | None, log=print, on_iteration=None) -> dict:
    """Run iterations from the trainer's current one to ``cfg.iterations`` with checkpoints and the KL guard.
    ``on_iteration(stats, iteration)``, if given, gets each iteration's statistics as it finishes (the stage streams
    them into its MLflow run)."""
    name = "ppo" if trainer.advantage == "gae" else "reinforce_pp"
    bar = tqdm(total=cfg.iterations, initial=trainer.iteration, desc=name, unit="iter")
    while trainer.iteration < cfg.iterations:
        idx = prompt_schedule(len(prompts), cfg.rollout_prompts, trainer.iteration, trainer.seed)
        out = trainer.step([prompts[i] for i in idx])
        if out.get("stop"):
            trainer.restore_last_good()
            trainer.stopped = f"kl_limit: rollout KL to reference {out['kl_to_ref']:.2f} > {cfg.kl_limit}"
            log(f"{name}: stopping at iteration {trainer.iteration}: {trainer.stopped}; keeping the last policy "
                "under it")
            break
        bar.update(1)
        if on_iteration is not None:
            on_iteration({k: v for k, v in out.items() if k != "iteration"}, out.get("iteration", trainer.iteration))
        bar.set_postfix(score=f"{out['score']:.3f}", kl=f"{out['kl_to_ref']:.2f}")
        if ckpt_dir is not None and cfg.checkpoint_every and trainer.iteration % cfg.checkpoint_every == 0:
            trainer.save(ckpt_dir)
    bar.close()
    return {"iterations": trainer.iteration, "stopped": trainer.stopped}
