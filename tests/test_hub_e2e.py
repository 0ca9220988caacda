"""Real-data shape, end to end: a hub-format model that `base` did not build and an HH-format dataset directory.

The model directory is what a hub repo holds for a Qwen2 checkpoint — its own architecture (Qwen2, grouped-query
attention), its own tokenizer with a ChatML chat template and no pad token, safetensors weights — written here with
``save_pretrained``; the dataset is a directory of HH-RLHF-style rows ("\\n\\nHuman: ...\\n\\nAssistant: ...") that
curate loads through ``datasets.load_dataset``. Nothing is downloaded. `dvc repro` runs curate -> base -> sft ->
reward_model -> judge_model -> a DPO round -> evaluate -> register (one round, for the suite's time
budget: later rounds are the same stages, chained as the embedded e2e tests check); there is no gold reward, so
the gate decides on the held-out judge. Asserted: every KL is >= 0 (evaluate samples at temperature 0.7, the KL from separate
temperature-1 samples), the judge metrics exist with intervals, and the registry's decisions name the judge rule.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from _project import init_project, read, sh

pytestmark = pytest.mark.slow

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _qwen2_dir(root: Path, texts: list[str]) -> Path:
    """A tiny Qwen2 checkpoint in the hub layout: ChatML template, eos <|im_end|>, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
    fast.chat_template = CHATML
    assert fast.pad_token is None
    config = Qwen2Config(vocab_size=len(fast), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=fast.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    import torch

    torch.manual_seed(0)
    d = root / "tiny-qwen2"
    Qwen2ForCausalLM(config).save_pretrained(d, safe_serialization=True)
    fast.save_pretrained(d)
    return d


def _hh_dir(root: Path) -> tuple[Path, list[str]]:
    """HH-RLHF-format rows from the embedded task's prompts and annotated pairs (it only supplies text here)."""
    from alignloop.core.synthetic import make_corpus

    corpus = make_corpus(num_prompts=90, sft_per_prompt=1, pairs_per_prompt=4, annotator_temperature=0.3,
                         good_demo_fraction=0.35, seed=0)
    rows, texts = [], []
    for r in corpus["prefs"]:
        human = f"\n\nHuman: {r['prompt']}\n\nAssistant: "
        rows.append({"chosen": human + r["chosen"], "rejected": human + r["rejected"]})
        texts += [r["prompt"], r["chosen"], r["rejected"]]
    d = root / "hh_ds"
    d.mkdir()
    random.Random(0).shuffle(rows)
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d, texts


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    assets = tmp_path_factory.mktemp("hub-assets")
    data_dir, texts = _hh_dir(assets)
    model_dir = _qwen2_dir(assets, texts)
    params = {
        "experiment": "hub-e2e",
        "seed": 0,
        "data": {"source": "hub", "path": str(data_dir), "adapter": "hh"},
        "curate": {"eval_fraction": 0.2, "judge_fraction": 0.2},
        "model": {"name_or_path": str(model_dir), "max_length": 96},
        "sft": {"epochs": 2, "lr": 0.003, "batch_size": 16},
        "reward_model": {"epochs": 3, "lr": 0.001, "batch_size": 16},
        "judge_model": {"enabled": True, "init": "base", "epochs": 3, "lr": 0.001, "batch_size": 16},
        "generate": {"n": 4, "max_new_tokens": 16},
        "dpo": {"beta": 0.3, "lr": 0.0005, "epochs": 1, "batch_size": 8},
        "evaluate": {"max_new_tokens": 16, "samples_per_prompt": 2, "kl_samples_per_prompt": 2, "temperature": 0.7},
        # No gold reward on hub data: gate on the independent judge (as configs/gpu-small.yaml does), never on proxy.
        "registry": {"gate": {"beat_champion": ["win_rate_vs_sft_judge"], "lower_bound": {"win_rate_vs_sft_judge": 0.0},
                              "max": {"kl_to_sft": 50.0}, "min": {}}},
        "rounds": {"r1": {"algo": "dpo", "prev": "sft"}},
    }
    root = init_project(tmp_path_factory.mktemp("hub-e2e"), params)
    sh(["dvc", "repro"], root, timeout=1800)
    return root


def test_the_hub_model_is_what_the_policies_are_made_of(project):
    base = json.loads((project / "data/models/base/config.json").read_text())
    assert base["model_type"] == "qwen2" and base["num_key_value_heads"] == 2
    for d in ("data/models/sft", "data/rounds/r1/policy"):
        assert json.loads((project / d / "config.json").read_text())["model_type"] == "qwen2"
        assert list((project / d).glob("*.safetensors"))
    tok = json.loads((project / "data/models/sft/tokenizer_config.json").read_text())
    assert "<|im_start|>" in (tok.get("chat_template") or (project / "data/models/sft/chat_template.jinja").read_text())
    curated = read(project, "data/curated/metrics.json")
    assert curated["pref_judge_rows"] > 0 and curated["quarantined"] == 0, curated


def test_kl_is_never_negative_and_the_judge_decides_the_gate(project):
    sft = read(project, "data/eval/sft.json")
    assert "gold_reward" not in sft  # hub data: no gold anywhere
    for r in ("r1",):
        ev = read(project, f"data/rounds/{r}/eval.json")
        assert ev["settings"]["temperature"] == 0.7 and ev["kl_samples"] > 0
        for key in ("kl_to_sft", "kl_to_prev"):
            assert ev[key] >= 0 and ev[f"{key}_ci"]["low"] >= 0, (r, key, ev[key])
        assert ev["kl_to_sft"] > 0  # the policy moved
        for key in ("judge_reward", "win_rate_vs_sft_judge", "win_rate_vs_champion_judge"):
            assert ev[f"{key}_ci"]["low"] <= ev[key] <= ev[f"{key}_ci"]["high"], (r, key)
        assert "proxy_judge_gap" in ev and "judge_eval_accuracy" in ev
        rec = read(project, f"data/rounds/{r}/registry.json")
        rules = [x.split()[1] for x in rec["reasons"]]
        assert "win_rate_vs_sft_judge:" in rules and "proxy_reward:" not in rules, rec["reasons"]
        # The decision follows the judge: promoted exactly when its win-rate beat the champion's (and KL is capped).
        champ = rec["champion_before"]["metrics"]["win_rate_vs_sft_judge"]
        assert rec["promoted"] == (ev["win_rate_vs_sft_judge"] > champ and ev["kl_to_sft"] <= 50.0), rec
    assert "Running stage" not in sh(["dvc", "repro"], project).stdout
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert {"judge_model", "evaluate_r1", "register_r1"} <= set(stages)
