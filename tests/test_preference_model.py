"""The preference model and the self-play training loop on tiny models built from config (no pipeline project):
pair encoding, both-order training rows, batched scoring of every ordered pair, held-out metrics; the Trainer with
our loss really trains (loss falls, weights change, the first step starts from log-ratio 0)."""

from __future__ import annotations

import pytest
import torch

from alignloop.core.config import ArchConfig
from alignloop.core.selection import symmetrise, win_rates
from alignloop.core.synthetic import make_corpus
from alignloop.ml.inference import encode_response, response_logprobs
from alignloop.ml.modeling import build_tiny_model, train_tokenizer
from alignloop.ml.preference import (MARK_A, MARK_B, PairCollator, as_preference_model, encode_pair, heldout_metrics,
                                     pair_training_rows, preference_matrices)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300)


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(num_prompts=40, sft_per_prompt=2, pairs_per_prompt=2, annotator_temperature=0.3,
                       good_demo_fraction=0.35, seed=0)


@pytest.fixture(scope="module")
def tok(corpus):
    texts = [r["prompt"] for r in corpus["prompts"]] + [r["response"] for r in corpus["sft"]]
    return train_tokenizer(texts + [MARK_A, MARK_B], 300)


def _pm(tok):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return as_preference_model(LlamaForSequenceClassification(cfg), tok)


def test_a_pair_is_the_rendered_prompt_then_both_marked_responses_cut_evenly(tok):
    ids = encode_pair(tok, "tell me about tea", "warm cup", "cold milk", 200)
    text = tok.decode(ids)
    assert text.index("tell me about tea") < text.index("[A] warm cup") < text.index("[B] cold milk")
    long_a, long_b = " ".join(["tea"] * 80), " ".join(["cup"] * 80)
    cut = encode_pair(tok, "tell me about tea", long_a, long_b, 60)
    assert len(cut) <= 60
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    from alignloop.ml.modeling import render_prompt

    prompt, ma, mb = enc(render_prompt(tok, "tell me about tea")), enc(MARK_A), enc(MARK_B)
    k = (60 - len(prompt) - len(ma) - len(mb)) // 2  # the same number of tokens for both sides
    assert cut == prompt + ma + enc(long_a)[:k] + mb + enc(long_b)[:k]


def test_training_rows_hold_each_pair_in_both_orders_with_the_label_flipped(tok):
    rows = pair_training_rows([{"prompt": "p", "chosen": "good", "rejected": "bad"}], tok, 64)
    assert [r["labels"] for r in rows] == [[1.0], [0.0]]
    assert rows[0]["input_ids"] == encode_pair(tok, "p", "good", "bad", 64)
    assert rows[1]["input_ids"] == encode_pair(tok, "p", "bad", "good", 64)
    batch = PairCollator(tok.pad_token_id)(rows)
    assert batch["labels"].tolist() == [[1.0], [0.0]] and batch["input_ids"].shape[0] == 2


def test_batched_scoring_of_every_ordered_pair_equals_one_pair_at_a_time(tok):
    pm = _pm(tok)
    groups = [("tell me about tea", ["warm cup", "cold", "a very long reply about tea and milk"]),
              ("say something about space", ["stars", "moon orbit"])]
    mats = preference_matrices(pm, tok, groups, batch_size=3, max_length=128, progress=False)
    assert [len(m) for m in mats] == [3, 2]
    for (prompt, rs), mat in zip(groups, mats):
        for i in range(len(rs)):
            assert mat[i][i] == 0.5
            for j in range(len(rs)):
                if i != j:
                    one = preference_matrices(pm, tok, [(prompt, [rs[i], rs[j]])], batch_size=1, max_length=128,
                                              progress=False)[0][0][1]
                    assert mat[i][j] == pytest.approx(one, abs=1e-5)  # padding in a batch changes the last bits only
        sym = symmetrise(mat)
        assert sum(win_rates(sym)) == pytest.approx(len(rs) / 2)


def test_the_preference_model_learns_the_training_preferences_and_reports_held_out_metrics(tok, corpus):
    """Trained with the stage's Trainer setup (BCE on the one logit) for a few epochs, the training loss falls and
    held-out metrics come out in range; a deterministic rule ('the reply with the word tea wins') is learnt."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    pm = _pm(tok)
    pairs = [{"prompt": "tell me about tea", "chosen": f"tea {w}", "rejected": f"{w} milk"}
             for w in ("warm", "cup", "leaf", "brew", "hot", "green", "black", "pot")]
    rows = pair_training_rows(pairs, tok, 64)
    args = TrainingArguments(output_dir="/tmp/alignloop-test-pm", per_device_train_batch_size=8, num_train_epochs=30,
                             learning_rate=5e-3, logging_steps=1, report_to="none", save_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True, seed=0, use_cpu=True)
    trainer = Trainer(model=pm, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=PairCollator(tok.pad_token_id))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] * 0.5
    held = heldout_metrics(trainer.model, tok, pairs[:4], batch_size=4, max_length=64,
                           gold=lambda p, a, b: 1.0 if "tea" in a.split()[0] else 0.0)
    assert held["eval_accuracy"] == 1.0 and held["eval_gold_accuracy"] == 1.0
    assert 0.0 <= held["symmetry_error"] < 0.5
    assert held["eval_pairs"] == 4


def test_the_group_trainer_starts_at_log_ratio_zero_and_moves_the_policy_its_loss_wants(tok, corpus):
    """SPPO's loss through GroupLossTrainer: at step 0 the policy's log-probs equal the precomputed iterate's (the
    anchors are computed the way training computes them), so the first loss is sum of eta^2 (p - 1/2)^2 / 2 terms;
    after training, the chosen response's log-ratio to the iterate rose and the rejected one's fell."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from alignloop.ml.preference_losses import sppo_loss
    from alignloop.ml.selfplay import GroupCollator, GroupLossTrainer

    policy = build_tiny_model(TINY, tok, max_length=64, seed=0)
    prompt, chosen, rejected = "tell me about tea", "warm tea cup", "cold milk bad"
    iterate = response_logprobs(policy, tok, [prompt, prompt], [chosen, rejected], batch_size=2, max_length=64)
    enc = [encode_response(tok, prompt, x, 64) for x in (chosen, rejected)]
    group = {"ids": [e[0] for e in enc], "starts": [e[1] for e in enc], "iterate": iterate, "ref": iterate,
             "target": [0.9, 0.1]}
    eta = 4.0
    loss_fn = lambda p, b: sppo_loss(p[:, 0], p[:, 1], b["iterate"][:, 0], b["iterate"][:, 1],  # noqa: E731
                                     b["target"][:, 0], b["target"][:, 1], eta)
    collate = GroupCollator(tok.pad_token_id)
    batch = collate([group])
    with torch.no_grad():
        trainer0 = GroupLossTrainer(model=policy, args=TrainingArguments(output_dir="/tmp/alignloop-test-gl",
                                    report_to="none", use_cpu=True), loss_fn=loss_fn, data_collator=collate)
        first = float(trainer0.compute_loss(policy, batch))
    assert first == pytest.approx(((eta * 0.4) ** 2 + (eta * -0.4) ** 2) / 2, abs=1e-4)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    args = TrainingArguments(output_dir="/tmp/alignloop-test-gl", per_device_train_batch_size=1, num_train_epochs=40,
                             learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True, seed=0, use_cpu=True)
    trainer = GroupLossTrainer(model=policy, args=args, train_dataset=Dataset.from_list([group]),
                               data_collator=collate, loss_fn=loss_fn)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] * 0.2
    assert any(not torch.equal(before[n], p) for n, p in policy.named_parameters())
    after = response_logprobs(policy, tok, [prompt, prompt], [chosen, rejected], batch_size=2, max_length=64)
    assert after[0] - iterate[0] == pytest.approx(eta * 0.4, abs=0.5)  # towards eta (p_w - 1/2) = +1.6
    assert after[1] - iterate[1] == pytest.approx(eta * -0.4, abs=0.5)  # towards eta (p_l - 1/2) = -1.6


def test_lists_of_different_lengths_are_padded_with_invalid_slots(tok):
    from alignloop.ml.selfplay import GroupCollator

    enc = [encode_response(tok, "p", x, 64) for x in ("a b", "c", "d e f")]
    g3 = {"ids": [e[0] for e in enc], "starts": [e[1] for e in enc], "iterate": [1.0, 2.0, 3.0], "ref": [0.0] * 3,
          "target": [1.0, 0.5, 0.0]}
    g2 = {"ids": [e[0] for e in enc[:2]], "starts": [e[1] for e in enc[:2]], "iterate": [4.0, 5.0], "ref": [0.0] * 2,
          "target": [1.0, 0.0]}
    b = GroupCollator(tok.pad_token_id)([g3, g2])
    assert b["valid"].tolist() == [[True, True, True], [True, True, False]]
    assert b["iterate"].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]
    assert b["input_ids"].shape[0] == 5  # every real response once
