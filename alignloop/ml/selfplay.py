"""The training loop of the general-preference rounds (sppo, dno, inpo, lipo): transformers' Trainer over groups of
responses to one prompt, with our loss.

Why not TRL's DPOTrainer: it trains on (chosen, rejected) pairs against one reference. SPPO regresses each response's
log-ratio onto its own soft win-rate, INPO anchors to the previous iterate and the SFT reference at once, LiPO scores
whole ranked lists — none fits its inputs or its loss list (TRL's ``sppo_hard`` is only SPPO's hard-label special
case). What DPOTrainer would add beyond the loss — the loop, checkpoints, an exact resume — comes from the Trainer this
subclasses, as for every other trained stage; the losses are the small pure functions of
alignloop.ml.preference_losses. The anchors' log-probs (previous iterate, reference) are computed once before
training, as TRL's precompute_ref_log_probs does, so no second model stays in memory while training.

A group: ``{"ids": [[token ids], ...], "starts": [response start, ...], "iterate": [...], "ref": [...],
"target": [...]}`` — K responses
(2 for the pairwise losses, a ranked list for lipo), their anchors' summed response log-probs and the per-response
target (win-rate, or the list's label).
"""

from __future__ import annotations

import torch
from transformers import Trainer

from alignloop.ml.inference import padded_responses, summed_logprobs


class GroupCollator:
    """Every response of the batch's groups as one right-padded batch, plus (B, K) anchor, target and validity
    tensors (groups shorter than the batch's longest are padded with invalid slots)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, groups: list[dict]) -> dict:
        k = max(len(g["ids"]) for g in groups)
        flat = [(list(a), int(b)) for g in groups for a, b in zip(g["ids"], g["starts"])]
        ids, mask, resp = padded_responses(flat, self.pad_id)
        valid = torch.zeros((len(groups), k), dtype=torch.bool)
        out = {name: torch.zeros((len(groups), k), dtype=torch.float32) for name in ("iterate", "ref", "target")}
        for row, g in enumerate(groups):
            n = len(g["ids"])
            valid[row, :n] = True
            for name in out:
                out[name][row, :n] = torch.tensor(g[name], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "response_mask": resp, "valid": valid, **out}


class GroupLossTrainer(Trainer):
    """Trainer whose loss is ``loss_fn(policy, batch) -> per-group losses (B,)``: ``policy`` is the (B, K) summed
    response log-probs under the model being trained (0 at invalid slots), ``batch`` the collator's tensors."""

    def __init__(self, *args, loss_fn, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        valid = inputs["valid"]
        flat = summed_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"])
        policy = torch.zeros(valid.shape, dtype=flat.dtype, device=flat.device)
        policy[valid] = flat  # row-major: the collator flattened groups in order, slots in order
        losses = self.loss_fn(policy, inputs)
        loss = losses.mean()
        return (loss, {"losses": losses}) if return_outputs else loss
