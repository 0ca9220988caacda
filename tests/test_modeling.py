"""Tokenizer and model construction/loading (alignloop.ml.modeling) and the `base` stage that uses them.

Hub-format loading is exercised against local directories written with ``save_pretrained`` (the layout of a
hub repo); nothing is downloaded (tests/conftest.py sets HF_HUB_OFFLINE).
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from alignloop.core.config import ArchConfig, ModelConfig
from alignloop.ml.modeling import (
    ASSISTANT,
    BOS,
    CHAT_TEMPLATE,
    EOS,
    PAD,
    SYSTEM,
    USER,
    _load_kwargs,
    build_tiny_model,
    count_parameters,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    render_full,
    render_prompt,
    train_tokenizer,
)
from alignloop.core.synthetic import make_corpus

TINY_ARCH = ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300)
SPECIALS = (PAD, BOS, EOS, USER, ASSISTANT, SYSTEM)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[dict]]:
    return make_corpus(num_prompts=60, sft_per_prompt=2, pairs_per_prompt=1, annotator_temperature=0.5,
                       good_demo_fraction=0.35, seed=0)


@pytest.fixture(scope="module")
def texts(corpus) -> list[str]:
    out = [r["prompt"] for r in corpus["prompts"]] + [r["response"] for r in corpus["sft"]]
    for r in corpus["prefs"]:
        out += [r["chosen"], r["rejected"]]
    return out


@pytest.fixture(scope="module")
def tok(texts):
    return train_tokenizer(texts, 300)


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory, tok) -> Path:
    """A tiny model + tokenizer saved as a hub repo would hold them (safetensors, chat template)."""
    d = tmp_path_factory.mktemp("hub") / "tiny-llama"
    model = build_tiny_model(TINY_ARCH, tok, max_length=64, seed=0)
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- train_tokenizer ----------------------------------------------------------------------------


def test_special_tokens(tok):
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == (PAD, EOS, BOS)
    assert tok.pad_token_id != tok.eos_token_id
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIALS]
    assert len(set(ids)) == len(SPECIALS)
    assert all(i is not None and i != tok.unk_token_id for i in ids)
    for t in SPECIALS:  # each special token is one id when it appears in text
        assert tok(t, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(t)]
    assert tok.padding_side == "left"
    assert tok.chat_template == CHAT_TEMPLATE
    assert len(tok) <= 300


def test_encode_decode_round_trip(tok, corpus):
    for s in (corpus["prompts"][0]["prompt"], corpus["sft"][3]["response"], "Unseen words: zebra, 42!"):
        assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s


def _check_prompt_prefix(tok, prompt, response):
    p, f = render_prompt(tok, prompt), render_full(tok, prompt, response)
    assert f.startswith(p) and len(f) > len(p)
    assert f.endswith(EOS)
    assert f[len(p):] == response + EOS
    pids = tok(p, add_special_tokens=False)["input_ids"]
    fids = tok(f, add_special_tokens=False)["input_ids"]
    # TRL (and response_logprobs) find the completion as the tokens after the prompt's tokens.
    assert fids[: len(pids)] == pids and len(fids) > len(pids)
    assert fids[-1] == tok.eos_token_id
    assert pids[-1] == tok.convert_tokens_to_ids(ASSISTANT)


def test_render_string_prompt(tok, corpus):
    prompt, response = corpus["sft"][0]["prompt"], corpus["sft"][0]["response"]
    assert render_prompt(tok, prompt) == f"{USER}{prompt}{ASSISTANT}"
    _check_prompt_prefix(tok, prompt, response)
    for row in corpus["sft"][:20]:
        _check_prompt_prefix(tok, row["prompt"], row["response"])


def test_render_multi_turn_with_system(tok, corpus):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": corpus["prompts"][1]["prompt"]},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "and more?"},
    ]
    p = render_prompt(tok, msgs)
    assert p == (f"{SYSTEM}Be brief.{USER}{msgs[1]['content']}{ASSISTANT}earlier answer{EOS}"
                 f"{USER}and more?{ASSISTANT}")
    _check_prompt_prefix(tok, msgs, "a final reply")
    # Extra keys on messages (as hub datasets carry) are ignored.
    assert render_prompt(tok, [{**m, "name": "x"} for m in msgs]) == p


# --- build_tiny_model ---------------------------------------------------------------------------


def test_default_arch_size(texts):
    # The task's vocabulary is small; random words give BPE enough distinct pairs to fill 1024 entries.
    rng = random.Random(0)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 7))) for _ in range(3000)]
    extra = [" ".join(words[i : i + 10]) for i in range(0, len(words), 10)]
    tok1024 = train_tokenizer(texts + extra, 1024)
    assert len(tok1024) == 1024
    model = build_tiny_model(ArchConfig(), tok1024, max_length=96, seed=0)
    n = count_parameters(model)
    assert 1_000_000 <= n <= 5_000_000, n
    assert model.config.vocab_size == len(tok1024)
    assert model.config.pad_token_id == tok1024.pad_token_id
    assert model.config.eos_token_id == tok1024.eos_token_id
    assert model.config.max_position_embeddings >= 96


def test_seeded_init(tok):
    a = build_tiny_model(TINY_ARCH, tok, max_length=64, seed=0)
    b = build_tiny_model(TINY_ARCH, tok, max_length=64, seed=0)
    c = build_tiny_model(TINY_ARCH, tok, max_length=64, seed=1)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    assert a.generation_config.pad_token_id == tok.pad_token_id
    assert a.generation_config.eos_token_id == tok.eos_token_id


# --- hub-format loading (local files) -----------------------------------------------------------


def test_load_hub_layout(hub_dir, tok):
    assert (hub_dir / "model.safetensors").exists()
    cfg = ModelConfig(name_or_path=str(hub_dir))
    model = load_causal_lm(hub_dir, cfg)
    assert _same_weights(model, build_tiny_model(TINY_ARCH, tok, max_length=64, seed=0))
    assert model.dtype == torch.float32
    loaded = load_tokenizer(hub_dir, cfg)
    assert loaded.chat_template == CHAT_TEMPLATE  # its own template is kept, not the fallback
    assert loaded.padding_side == "left"
    assert loaded.pad_token_id == tok.pad_token_id and loaded.eos_token_id == tok.eos_token_id
    s = "tell me about music"
    assert render_full(loaded, s, "notes") == render_full(tok, s, "notes")
    assert loaded(render_full(loaded, s, "notes"))["input_ids"] == tok(render_full(tok, s, "notes"))["input_ids"]


def test_load_reward_model_adds_scalar_head(hub_dir):
    rm = load_reward_model(hub_dir, ModelConfig(name_or_path=str(hub_dir)))
    assert rm.config.num_labels == 1
    out = rm(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert out.shape == (1, 1)


def test_pytorch_bin_only_is_refused(tmp_path, tok):
    d = tmp_path / "bin-only"
    model = build_tiny_model(TINY_ARCH, tok, max_length=64, seed=0)
    # transformers 5 ignores safe_serialization=False and writes safetensors anyway, so the pickle-only
    # checkpoint (the layout of older hub repos) is written by hand.
    model.config.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    tok.save_pretrained(d)
    assert not list(d.glob("*.safetensors"))
    with pytest.raises(FileNotFoundError) as exc:
        load_causal_lm(d, ModelConfig(name_or_path=str(d)))
    msg = str(exc.value)
    assert str(d) in msg
    assert "safetensors" in msg and "Fix:" in msg


def test_missing_dir_is_a_clear_error(tmp_path):
    d = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="Fix:") as exc:
        load_causal_lm(d, ModelConfig(name_or_path=str(d)))
    assert str(d) in str(exc.value)


def test_load_kwargs_are_safe_by_default():
    cfg = ModelConfig()
    assert cfg.trust_remote_code is False
    assert _load_kwargs(cfg, local=True) == {"trust_remote_code": False, "use_safetensors": True, "dtype": torch.float32}
    pinned = ModelConfig(name_or_path="org/model", revision="abc123", dtype="bfloat16")
    assert _load_kwargs(pinned, local=False)["revision"] == "abc123"
    assert _load_kwargs(pinned, local=False)["dtype"] == torch.bfloat16
    assert "revision" not in _load_kwargs(pinned, local=True)  # a local copy has no hub revision


def test_from_pretrained_gets_safe_kwargs(hub_dir, monkeypatch):
    seen: dict[str, dict] = {}

    def spy(cls_name, original):
        def from_pretrained(path, *args, **kwargs):
            seen[cls_name] = kwargs
            return original(path, *args, **kwargs)
        return from_pretrained

    for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer"):
        cls = getattr(transformers, name)
        monkeypatch.setattr(cls, "from_pretrained", spy(name, cls.from_pretrained))
    cfg = ModelConfig(name_or_path=str(hub_dir))
    load_causal_lm(hub_dir, cfg)
    load_reward_model(hub_dir, cfg)
    load_tokenizer(hub_dir, cfg)
    for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        assert seen[name]["trust_remote_code"] is False
        assert seen[name]["use_safetensors"] is True
    assert seen["AutoTokenizer"]["trust_remote_code"] is False


def test_fallback_chat_template(tmp_path, tok):
    d = tmp_path / "no-template"
    tok.save_pretrained(d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    cfg_file = d / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(d)).chat_template is None
    loaded = load_tokenizer(d)
    assert loaded.chat_template is not None and loaded.chat_template != CHAT_TEMPLATE
    assert render_prompt(loaded, "hi there") == "User:\nhi there\nAssistant:\n"
    assert render_full(loaded, "hi there", "hello") == f"User:\nhi there\nAssistant:\nhello{loaded.eos_token}\n"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    p = render_prompt(loaded, msgs)
    assert p == "System:\nBe brief.\nUser:\nhi\nAssistant:\n"
    assert render_full(loaded, msgs, "ok").startswith(p)
    # Token-level prefix too (TRL and response_logprobs find the completion where the ids diverge).
    ids_p = loaded(p, add_special_tokens=False)["input_ids"]
    ids_f = loaded(render_full(loaded, msgs, "ok"), add_special_tokens=False)["input_ids"]
    assert ids_f[: len(ids_p)] == ids_p


def test_pad_falls_back_to_eos(tmp_path, texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=280, special_tokens=["</s>"], show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>").save_pretrained(tmp_path / "nopad")
    loaded = load_tokenizer(tmp_path / "nopad")
    assert loaded.pad_token == "</s>" and loaded.padding_side == "left"
    assert render_full(loaded, "hi", "yo").endswith("yo</s>\n")  # fallback template: one line per turn


# --- the `base` stage ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory) -> Path:
    """One MLflow store for the module's stage runs: creating the sqlite schema is the slow part."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def stage_dir(tmp_path, monkeypatch, mlflow_dir) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_dir}/mlflow.db")
    monkeypatch.setenv("ALIGNLOOP_ARTIFACT_ROOT", str(mlflow_dir / "mlartifacts"))
    return tmp_path


def _stage_runs(mlflow_dir: Path) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{mlflow_dir}/mlflow.db")
    exp = client.get_experiment_by_name("test-base")
    return [r.data.tags["stage"] for r in client.search_runs([exp.experiment_id])] if exp else []


def _write_params(root: Path, model: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump({"experiment": "test-base", "seed": 0, "model": model}))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_base_stage_hub_model(stage_dir, hub_dir, tok, mlflow_dir):
    from alignloop.pipeline.stages import base

    _write_params(stage_dir, {"name_or_path": str(hub_dir)})
    assert not (stage_dir / "data" / "curated").exists()  # the hub path needs no curated data
    assert base.main([]) == 0
    out = stage_dir / "data" / "models" / "base"
    assert (out / "model.safetensors").exists()
    assert not list(out.glob("*.bin"))
    model = load_causal_lm(out, ModelConfig())
    assert _same_weights(model, load_causal_lm(hub_dir, ModelConfig()))
    saved = load_tokenizer(out)
    assert saved.chat_template == CHAT_TEMPLATE
    assert saved("hello world")["input_ids"] == tok("hello world")["input_ids"]
    assert "base" in _stage_runs(mlflow_dir)


def test_base_stage_embedded(stage_dir, corpus):
    from alignloop.pipeline.stages import base

    _write_jsonl(stage_dir / "data/curated/sft.jsonl",
                 [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]} for r in corpus["sft"][:60]])
    pairs = [{"id": r["id"], "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
             for r in corpus["prefs"]]
    # One prompt as a chat message list, as curated rows from chat datasets carry.
    pairs[0]["prompt"] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": pairs[0]["prompt"]}]
    _write_jsonl(stage_dir / "data/curated/prefs/train.jsonl", pairs[:40])
    _write_jsonl(stage_dir / "data/curated/prefs/eval.jsonl", pairs[40:50])
    _write_params(stage_dir, {"name_or_path": "embedded", "max_length": 64, "arch": TINY_ARCH.model_dump()})
    assert base.main([]) == 0
    out = stage_dir / "data" / "models" / "base"
    assert (out / "model.safetensors").exists()
    saved = load_tokenizer(out)
    assert saved.chat_template == CHAT_TEMPLATE
    assert saved.pad_token == PAD and saved.eos_token == EOS
    assert len(saved) <= TINY_ARCH.vocab_size
    model = load_causal_lm(out, ModelConfig())
    assert model.config.hidden_size == TINY_ARCH.hidden_size
    assert model.config.num_hidden_layers == TINY_ARCH.num_layers
    assert model.config.vocab_size == len(saved)
    assert model.config.pad_token_id == saved.pad_token_id


def test_base_stage_refuses_bin_only(stage_dir, tok, capsys):
    from alignloop.pipeline.stages import base

    d = stage_dir / "bin-only"
    model = build_tiny_model(TINY_ARCH, tok, max_length=64, seed=0)
    model.config.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    tok.save_pretrained(d)
    _write_params(stage_dir, {"name_or_path": str(d)})
    assert base.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(d) in err and "safetensors" in err
    assert not (stage_dir / "data" / "models" / "base").exists()
