"""The pairwise preference model: P(a > b | x) from one forward pass over the prompt and both responses.

The design of PairRM and of RLHFlow's pair preference model: a sequence classifier with one logit reads the prompt as
the chat template renders it for generation, then ``[A] <a>`` and ``[B] <b>``; sigmoid(logit) is P(a > b). A
Bradley-Terry reward model scores each response alone, so its preferences are transitive by construction; this one
sees both, so it can learn "a beats b, b beats c, c beats a". It is trained with binary cross-entropy on the curated
pairs in both orders (label flipped), which pushes it towards P(a > b) + P(b > a) = 1 without forcing it; what it
hands on is the average of both orders (core.selection.symmetrise), symmetric exactly, and the held-out metrics report
how far the raw orders were from it.

Training is transformers' Trainer with the classifier's own loss (problem_type multi_label_classification: BCE with
logits on the one logit), so checkpoints and resume are the Trainer's, as for every other trained stage.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from alignloop.ml.inference import _sorted_batches
from alignloop.ml.modeling import render_prompt

MARK_A, MARK_B = "[A] ", "\n[B] "


def pair_length(params) -> int:
    """Tokens of prompt + both responses: preference_model.max_length, or twice model.max_length."""
    return params.preference_model.max_length or 2 * params.model.max_length


def encode_pair(tokenizer, prompt, a: str, b: str, max_length: int) -> list[int]:
    """Token ids of the prompt (chat-rendered for generation), then ``[A] a`` and ``[B] b``. When the whole does not
    fit in ``max_length`` the prompt keeps at most half of it (its end) and each response is cut to half of what is
    left (the same cut for both, so neither order is favoured)."""
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_ids, ma, mb, ra, rb = enc(render_prompt(tokenizer, prompt)), enc(MARK_A), enc(MARK_B), enc(a), enc(b)
    room = max_length - len(ma) - len(mb)
    if len(prompt_ids) + len(ra) + len(rb) > room:
        prompt_ids = prompt_ids[-max(1, room // 2):]  # a prompt keeps at most half the room: its end
        k = max(1, (room - len(prompt_ids)) // 2)
        ra, rb = ra[:k], rb[:k]
    return prompt_ids + ma + ra + mb + rb


def pair_training_rows(pairs: list[dict], tokenizer, max_length: int) -> list[dict]:
    """Each curated pair twice: (chosen, rejected) labelled 1 and (rejected, chosen) labelled 0."""
    rows = []
    for p in pairs:
        for a, b, y in ((p["chosen"], p["rejected"], 1.0), (p["rejected"], p["chosen"], 0.0)):
            rows.append({"input_ids": encode_pair(tokenizer, p["prompt"], a, b, max_length), "labels": [y]})
    return rows


def right_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token sequences padded on the right: the classifier pools the last non-pad token."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, x in enumerate(seqs):
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return ids, mask


class PairCollator:
    """Right-padded ids, attention mask and float labels (B, 1)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        ids, mask = right_padded([f["input_ids"] for f in features], self.pad_id)
        labels = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def as_preference_model(model, tokenizer):
    """A one-logit sequence classifier set up to train as P(a > b): BCE with logits, pad token known for pooling."""
    model.config.problem_type = "multi_label_classification"  # BCEWithLogitsLoss(logit, label) with float labels
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


@torch.no_grad()
def preference_matrices(pm, tokenizer, groups: list[tuple[object, list[str]]], *, batch_size: int, max_length: int,
                        desc: str = "preferences", progress: bool = True) -> list[list[list[float]]]:
    """Raw P(i > j) for every ordered pair (i, j), i != j, of each group's responses (diagonal 0.5): n(n-1) forward
    passes per prompt, batched across prompts in length-sorted batches."""
    pm.eval()
    items = [(g, i, j) for g, (_, rs) in enumerate(groups) for i in range(len(rs)) for j in range(len(rs)) if i != j]
    encoded = [encode_pair(tokenizer, groups[g][0], groups[g][1][i], groups[g][1][j], max_length) for g, i, j in items]
    out = [[[0.5] * len(rs) for _ in rs] for _, rs in groups]
    for idx in tqdm(_sorted_batches([len(e) for e in encoded], batch_size), desc=desc, unit="batch", mininterval=2.0,
                    disable=not progress):
        ids, mask = right_padded([encoded[k] for k in idx], tokenizer.pad_token_id)
        probs = torch.sigmoid(pm(input_ids=ids.to(pm.device), attention_mask=mask.to(pm.device)).logits[:, 0].float())
        for row, k in enumerate(idx):
            g, i, j = items[k]
            out[g][i][j] = float(probs[row])
    return out


def heldout_metrics(pm, tokenizer, rows: list[dict], *, batch_size: int, max_length: int, gold=None) -> dict:
    """Held-out pairs: accuracy of the symmetrised P(chosen > rejected) > 1/2, of each raw order, the symmetry error
    mean |P(a > b) + P(b > a) - 1|, and (``gold(prompt, a, b) -> P_gold(a > b)``, embedded task) agreement with the
    true preference's direction, ties skipped."""
    from alignloop.core.selection import symmetrise

    if not rows:
        return {}
    mats = preference_matrices(pm, tokenizer, [(r["prompt"], [r["chosen"], r["rejected"]]) for r in rows],
                               batch_size=batch_size, max_length=max_length, desc="held-out pairs")
    ab, ba = [m[0][1] for m in mats], [m[1][0] for m in mats]
    sym = [symmetrise(m)[0][1] for m in mats]
    n = len(rows)
    out = {"eval_pairs": n, "eval_accuracy": sum(p > 0.5 for p in sym) / n,
           "eval_accuracy_chosen_first": sum(p > 0.5 for p in ab) / n,
           "eval_accuracy_rejected_first": sum(p < 0.5 for p in ba) / n,
           "symmetry_error": sum(abs(x + y - 1.0) for x, y in zip(ab, ba)) / n}
    if gold is not None:
        truth = [gold(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
        agree = [(p > 0.5) == (t > 0.5) for p, t in zip(sym, truth) if t != 0.5]
        out["eval_gold_accuracy"] = sum(agree) / len(agree) if agree else 0.0
    return out
