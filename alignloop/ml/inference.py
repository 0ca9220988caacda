"""Batched inference over a model: sampling, reward scoring, sequence log-probabilities.

These take loaded models and plain Python lists and return plain lists, so stages stay thin IO.
Generation uses HF ``generate`` with left padding and the KV cache, ``n`` samples per prompt expanded
from one prompt encoding; scoring and log-probs sort by length so each batch pads little.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from alignloop.ml.modeling import render_full, render_prompt


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest occurrence of any stop string (the stop string itself is dropped, as vLLM does);
    returns the text and whether a stop string was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def response_ids(tokenizer, ids: list[int]) -> tuple[list[int], str]:
    """The generated ids that are the response — up to and including the first EOS, else without padding — and
    the finish reason ("stop" or "length")."""
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos_id in ids:
        return ids[: ids.index(eos_id) + 1], "stop"
    return [t for t in ids if t != pad_id], "length"


def finish_row(tokenizer, ids: list[int], stop: Sequence[str] = ()) -> tuple[str, int, str]:
    """``(response, num_tokens, finish_reason)`` of one generated id sequence, the same for every backend:
    ids end at the first EOS (kept in the count), padding is dropped, text is cut at the first stop string."""
    ids, finish = response_ids(tokenizer, ids)
    text, hit = truncate_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)
    return text.strip(), len(ids), "stop" if hit else finish


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield i, items[i : i + size]


@torch.no_grad()
def check_prompt_lengths(path: str, prompts: list[dict], tokenizer, max_tokens: int, what: str) -> None:
    """Every prompt, rendered with the chat template, must fit in ``max_tokens``: a longer one would lose its end
    (the generation prompt) to truncation. A DataError lists each too-long prompt by file line."""
    from alignloop.core.files import DataError, line_numbers

    texts = [render_prompt(tokenizer, p["prompt"]) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    bad = [(p["id"], n) for p, n in zip(prompts, lengths) if n > max_tokens]
    if bad:
        lines = line_numbers(path)
        shown = "\n".join(f"  {path}:{lines.get(i, '?')}: prompt {i!r} has {n} tokens > {max_tokens}" for i, n in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(f"{path}: {len(bad)} prompt(s) longer than the {max_tokens} tokens {what} leaves for the prompt:\n"
                        f"{shown}{more}\n(fix: raise model.max_length, or lower curate.max_prompt_chars so curation "
                        "drops such prompts (counted in its metrics), then `dvc repro`)")


def sample(
    model,
    tokenizer,
    prompts: list[tuple[str, object]],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    max_prompt_tokens: int,
    stop: Sequence[str] = (),
    first_idx: dict | None = None,
    desc: str = "generate",
    with_ids: bool = False,
) -> list[dict]:
    """Sample ``n`` responses per ``(prompt_id, prompt)``; rows follow the samples contract.

    Seeding: batch ``b`` samples under ``torch.manual_seed(seed + b)``, so a rerun with the same prompts,
    batch size and seed reproduces every sample; the seed used is recorded per row. ``stop``: strings that end a
    response (generation halts there; the text is cut before it). ``first_idx``: per prompt id, the
    ``sample_idx`` of its first sample here (for adding samples to a prompt that has some). ``with_ids``: rows also
    carry ``prompt_ids`` and ``response_ids``, the very token ids the model saw and sampled (for scoring them
    without re-tokenising text; not part of the samples contract — drop them before writing rows).
    """
    model.eval()
    eos_id = tokenizer.eos_token_id
    rows: list[dict] = []
    bar = tqdm(total=len(prompts) * n, desc=desc, unit="sample", mininterval=2.0)
    for b, (_, batch) in enumerate(_batches(prompts, batch_size)):
        texts = [render_prompt(tokenizer, p) for _, p in batch]
        enc = tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False,
            truncation=True, max_length=max_prompt_tokens,
        ).to(model.device)
        batch_seed = seed + b
        torch.manual_seed(batch_seed)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            eos_token_id=eos_id,
            pad_token_id=tokenizer.pad_token_id,
            **({"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}),
        )
        gen = out[:, enc["input_ids"].shape[1]:]
        for j, (pid, prompt) in enumerate(batch):
            base = (first_idx or {}).get(pid, 0)
            for k in range(n):
                text, num_tokens, finish = finish_row(tokenizer, gen[j * n + k].tolist(), stop)
                rows.append({
                    "prompt_id": pid,
                    "sample_idx": base + k,
                    "prompt": prompt,
                    "response": text,
                    "num_tokens": num_tokens,
                    "finish_reason": finish,
                    "seed": batch_seed,
                })
                if with_ids:  # left padding: the prompt's ids are where the attention mask is set
                    rows[-1]["prompt_ids"] = enc["input_ids"][j][enc["attention_mask"][j].bool()].tolist()
                    rows[-1]["response_ids"] = response_ids(tokenizer, gen[j * n + k].tolist())[0]
        bar.update(len(batch) * n)
    bar.close()
    return rows


def _sorted_batches(lengths: list[int], batch_size: int, group: int = 0) -> list[list[int]]:
    """Batches of indices of similar length (less padding). ``group`` > 0: sorted only within consecutive groups
    of that many items, so the batches of a group do not depend on the items outside it (a shard that is a run of
    whole groups scores exactly the batches one process would: a score's last bits depend on its batch)."""
    group = group or len(lengths) or 1
    out = []
    for g0 in range(0, len(lengths), group):
        order = sorted(range(g0, min(g0 + group, len(lengths))), key=lambda i: lengths[i])
        out += [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return out


@torch.no_grad()
def reward_scores(rm, tokenizer, prompts: list, responses: list[str], *, batch_size: int, max_length: int, desc: str = "score",
                  progress: bool = True, group: int = 0) -> list[float]:
    """Scalar reward of each (prompt, response), scored as the chat template renders a finished turn; batches are
    length-sorted within consecutive groups of ``group`` items (0: all)."""
    rm.eval()
    texts = [render_full(tokenizer, p, r) for p, r in zip(prompts, responses)]
    encoded = [tokenizer(t, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    scores = [0.0] * len(texts)
    batches = _sorted_batches([len(e) for e in encoded], batch_size, group)
    for idx in tqdm(batches, desc=desc, unit="batch", mininterval=2.0, disable=not progress):
        # Right padding: the classification head pools the last non-pad token either way.
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        logits = rm(input_ids=ids.to(rm.device), attention_mask=mask.to(rm.device)).logits[:, 0].float().cpu()
        for row, i in enumerate(idx):
            scores[i] = float(logits[row])
    return scores


def encode_response(tokenizer, prompt, response: str, max_length: int) -> tuple[list[int], int]:
    """(token ids of prompt + response as a finished chat turn, cut at ``max_length``; where the response starts)."""
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(render_full(tokenizer, prompt, response), add_special_tokens=False)["input_ids"][:max_length]
    return full_ids, min(len(prompt_ids), len(full_ids))


def padded_responses(encoded: list[tuple[list[int], int]], pad_id: int):
    """Right-padded (ids, attention mask, response-token mask) tensors of encoded (ids, response start) rows."""
    width = max(len(f) for f, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    resp = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, (full, plen) in enumerate(encoded):
        ids[row, : len(full)] = torch.tensor(full)
        mask[row, : len(full)] = 1
        resp[row, plen : len(full)] = True
    return ids, mask, resp


def summed_logprobs(model, ids, mask, resp) -> torch.Tensor:
    """Per row, the sum of log p(token | tokens before it) over the response tokens (differentiable)."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    # Token t is predicted from position t-1.
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp * resp[:, 1:]).sum(-1)


@torch.no_grad()
def response_logprobs(model, tokenizer, prompts: list, responses: list[str], *, batch_size: int, max_length: int, desc: str = "logprobs") -> list[float]:
    """Sum of log p(response tokens | prompt) under ``model``, response tokens including the closing EOS."""
    model.eval()
    pairs = [encode_response(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    out = [0.0] * len(pairs)
    for idx in tqdm(_sorted_batches([len(f) for f, _ in pairs], batch_size), desc=desc, unit="batch", mininterval=2.0):
        ids, mask, resp = (t.to(model.device) for t in padded_responses([pairs[i] for i in idx], tokenizer.pad_token_id))
        total = summed_logprobs(model, ids, mask, resp).cpu()
        for row, i in enumerate(idx):
            out[i] = float(total[row])
    return out


@torch.no_grad()
def sequence_kl(policy, ref, prompt_ids: list[list[int]], resp_ids: list[list[int]], *, pad_id: int,
                batch_size: int, desc: str = "kl") -> list[dict[str, float]]:
    """KL(policy || ref) of each response, sampled from ``policy`` as it is (temperature 1, top_p 1) and given as the
    token ids that were sampled (re-tokenising the text need not give them back). Per sequence, summed over its
    response tokens: ``exact`` (the full-vocabulary KL at each position, rl.kl_exact: never negative, the default
    estimate), ``k1`` (log-ratio of the sampled tokens) and ``k3`` ((q/p - 1) - log q/p), the estimators PPO uses.
    Their means over samples estimate the same sequence KL; only ``exact`` is guaranteed >= 0 per sample."""
    from alignloop.ml.rl import kl_exact, kl_k1, kl_k3

    policy.eval()
    ref.eval()
    seqs = [(list(p) + list(r), len(p), len(r)) for p, r in zip(prompt_ids, resp_ids)]
    if any(plen == 0 for _, plen, _ in seqs):
        raise ValueError("sequence_kl: a prompt with no tokens (the first response token has no context)")
    out: list[dict[str, float]] = [{"exact": 0.0, "k1": 0.0, "k3": 0.0} for _ in seqs]
    for idx in tqdm(_sorted_batches([len(s) for s, _, _ in seqs], batch_size), desc=desc, unit="batch", mininterval=2.0):
        # Right padding: positions count from 0 in every row, as they did when the response was sampled.
        width = max(len(seqs[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        resp = torch.zeros((len(idx), width), dtype=torch.bool)  # positions whose *next* token is a response token
        for row, i in enumerate(idx):
            full, plen, rlen = seqs[i]
            ids[row, : len(full)] = torch.tensor(full)
            mask[row, : len(full)] = 1
            resp[row, plen - 1 : plen - 1 + rlen] = True
        ids, mask, resp = ids.to(policy.device), mask.to(policy.device), resp.to(policy.device)
        logits = policy(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        ref_logits = ref(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        if logits.shape[-1] != ref_logits.shape[-1]:
            raise ValueError(f"KL needs one vocabulary: the policy has {logits.shape[-1]} logits, the reference "
                             f"{ref_logits.shape[-1]} (fix: compare models built on the same tokenizer)")
        nxt, m = ids[:, 1:, None], resp[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, nxt).squeeze(-1)
        ref_logp = torch.log_softmax(ref_logits, -1).gather(-1, nxt).squeeze(-1)
        sums = {"exact": (kl_exact(logits, ref_logits) * m).sum(-1), "k1": (kl_k1(logp, ref_logp) * m).sum(-1),
                "k3": (kl_k3(logp, ref_logp) * m).sum(-1)}
        for row, i in enumerate(idx):
            out[i] = {k: float(v[row]) for k, v in sums.items()}
    return out


class RewardEnsemble:
    """The round's reward model(s) as one scorer: every member scores, alignloop.core.ensemble.aggregate combines them
    (one member: its own scores). ``keep_loaded``: hold the members between calls, for callers that score many
    times (PPO iterations, adaptive-budget waves); otherwise each call loads them one at a time, so k members never
    share memory."""

    def __init__(self, paths: list[str], model_cfg, *, batch_size: int, aggregate: str = "mean",
                 std_penalty: float = 1.0, keep_loaded: bool = False):
        self.paths, self.model_cfg, self.batch_size = paths, model_cfg, batch_size
        self.aggregate, self.std_penalty = aggregate, std_penalty
        self._loaded = [self._load(p) for p in paths] if keep_loaded else None

    @classmethod
    def from_params(cls, paths: list[str], params, score_cfg, *, keep_loaded: bool = False) -> RewardEnsemble:
        """The reward models at ``paths`` combined as ``score_cfg`` (a score section) says."""
        return cls(paths, params.model, batch_size=score_cfg.batch_size,
                   aggregate=score_cfg.aggregate, std_penalty=score_cfg.std_penalty, keep_loaded=keep_loaded)

    def _load(self, path: str):
        from alignloop.ml.modeling import load_reward_model, load_tokenizer, to_device

        return to_device(load_reward_model(path, self.model_cfg)), load_tokenizer(path, self.model_cfg)

    def __call__(self, prompts: list, responses: list[str], *, desc: str = "score", progress: bool = True,
                 group: int = 0) -> tuple[list[float], list[list[float]]]:
        """``(rewards, member_rewards)`` of each (prompt, response); ``group``: as in reward_scores."""
        from alignloop.core.ensemble import aggregate

        members = []
        for k, path in enumerate(self.paths):
            rm, tok = self._loaded[k] if self._loaded else self._load(path)
            members.append(reward_scores(rm, tok, prompts, responses, batch_size=self.batch_size,
                                         max_length=self.model_cfg.max_length, progress=progress, group=group,
                                         desc=desc if len(self.paths) == 1 else f"{desc} (member {k + 1}/{len(self.paths)})"))
            del rm
        rewards = members[0] if len(members) == 1 else aggregate(members, self.aggregate, self.std_penalty)
        return rewards, members
