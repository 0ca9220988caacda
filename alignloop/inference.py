"""Batched inference over a model: sampling, reward scoring, sequence log-probabilities.

These take loaded models and plain Python lists and return plain lists, so stages stay thin IO.
Generation uses HF ``generate`` with left padding and the KV cache, ``n`` samples per prompt expanded
from one prompt encoding; scoring and log-probs sort by length so each batch pads little.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from alignloop.modeling import render_full, render_prompt


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield i, items[i : i + size]


@torch.no_grad()
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
    desc: str = "generate",
) -> list[dict]:
    """Sample ``n`` responses per ``(prompt_id, prompt)``; rows follow the samples contract.

    Seeding: batch ``b`` samples under ``torch.manual_seed(seed + b)``, so a rerun with the same prompts,
    batch size and seed reproduces every sample; the seed used is recorded per row.
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
        )
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
        )
        gen = out[:, enc["input_ids"].shape[1]:]
        for j, (pid, prompt) in enumerate(batch):
            for k in range(n):
                ids = gen[j * n + k].tolist()
                if eos_id in ids:
                    ids = ids[: ids.index(eos_id) + 1]
                    finish = "stop"
                else:
                    ids = [t for t in ids if t != tokenizer.pad_token_id]
                    finish = "length"
                rows.append({
                    "prompt_id": pid,
                    "sample_idx": k,
                    "prompt": prompt,
                    "response": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                    "num_tokens": len(ids),
                    "finish_reason": finish,
                    "seed": batch_seed,
                })
        bar.update(len(batch) * n)
    bar.close()
    return rows


def _sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def reward_scores(rm, tokenizer, prompts: list, responses: list[str], *, batch_size: int, max_length: int, desc: str = "score") -> list[float]:
    """Scalar reward of each (prompt, response), scored as the chat template renders a finished turn."""
    rm.eval()
    texts = [render_full(tokenizer, p, r) for p, r in zip(prompts, responses)]
    encoded = [tokenizer(t, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    scores = [0.0] * len(texts)
    batches = _sorted_batches([len(e) for e in encoded], batch_size)
    for idx in tqdm(batches, desc=desc, unit="batch", mininterval=2.0):
        # Right padding: the classification head pools the last non-pad token either way.
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        logits = rm(input_ids=ids, attention_mask=mask).logits[:, 0]
        for row, i in enumerate(idx):
            scores[i] = float(logits[row])
    return scores


@torch.no_grad()
def response_logprobs(model, tokenizer, prompts: list, responses: list[str], *, batch_size: int, max_length: int, desc: str = "logprobs") -> list[float]:
    """Sum of log p(response tokens | prompt) under ``model``, response tokens including the closing EOS."""
    model.eval()
    pairs = []
    for p, r in zip(prompts, responses):
        prompt_ids = tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(render_full(tokenizer, p, r), add_special_tokens=False)["input_ids"][:max_length]
        pairs.append((full_ids, min(len(prompt_ids), len(full_ids))))
    out = [0.0] * len(pairs)
    for idx in tqdm(_sorted_batches([len(f) for f, _ in pairs], batch_size), desc=desc, unit="batch", mininterval=2.0):
        width = max(len(pairs[i][0]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        resp = torch.zeros((len(idx), width), dtype=torch.bool)
        for row, i in enumerate(idx):
            full, plen = pairs[i]
            ids[row, : len(full)] = torch.tensor(full)
            mask[row, : len(full)] = 1
            resp[row, plen : len(full)] = True
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        # Token t is predicted from position t-1.
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        total = (logp * resp[:, 1:]).sum(-1)
        for row, i in enumerate(idx):
            out[i] = float(total[row])
    return out
