"""Tokenizer and model construction/loading shared by the stages.

The embedded default trains a byte-level BPE tokenizer on the corpus and builds a small Llama-style model
from config. A hub id or local directory loads through the same ``from_pretrained`` calls, safetensors only,
``trust_remote_code`` off unless params turn it on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

BOS, EOS, PAD, USER, ASSISTANT, SYSTEM = "<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"

# One template for training (TRL renders prompt+completion with it) and generation (add_generation_prompt),
# so the prompt tokens the policy sees at inference are exactly those it was trained on.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}" + ASSISTANT + "{% generation %}{{ m['content'] }}" + EOS + "{% endgeneration %}"
    "{% else %}" + SYSTEM + "{{ m['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def fallback_chat_template(eos_token: str) -> str:
    nl = "{{ '\\n' }}"
    return (
        "{% for m in messages %}{{ m['role'] | capitalize }}:" + nl
        + "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}" + eos_token + "{% endgeneration %}"
        + "{% else %}{{ m['content'] }}{% endif %}" + nl + "{% endfor %}"
        + "{% if add_generation_prompt %}Assistant:" + nl + "{% endif %}"
    )


def as_messages(prompt: str | list[dict]) -> list[dict]:
    """A prompt (string or chat messages) as a chat message list."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The text the model is conditioned on for a prompt: its chat template with the generation prompt."""
    return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)


def render_full(tokenizer, prompt: str | list[dict], response: str) -> str:
    """Prompt plus response as the chat template renders a finished turn (ends with EOS)."""
    msgs = as_messages(prompt) + [{"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(msgs, tokenize=False)


def train_tokenizer(texts: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, USER, ASSISTANT, SYSTEM],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_model(arch, tokenizer, max_length: int, seed: int):
    """A small Llama-style causal LM built from config (random init, seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        max_position_embeddings=max(128, max_length * 2),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def _load_kwargs(model_cfg, *, local: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "trust_remote_code": model_cfg.trust_remote_code,
        "use_safetensors": True,
        "dtype": getattr(torch, model_cfg.dtype),
    }
    if not local and model_cfg.revision:
        kw["revision"] = model_cfg.revision
    return kw


def load_tokenizer(path: str | Path, model_cfg=None):
    from transformers import AutoTokenizer

    trust = bool(model_cfg and model_cfg.trust_remote_code)
    tok = from_pretrained(AutoTokenizer, path, "a tokenizer", trust_remote_code=trust)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        # Hub base models may ship without a template: a plain "Role:\n" layout. Every role line ends in a
        # newline so the prompt's tokens are a prefix of prompt+response tokens with byte-level BPE (a trailing
        # space would merge into the reply's first word). Newlines are Jinja expressions because transformers
        # renders with trim_blocks, which drops a literal newline after a block tag.
        tok.chat_template = fallback_chat_template(tok.eos_token)
    return tok


def from_pretrained(auto_class, path: str | Path, what: str, **kwargs):
    """``auto_class.from_pretrained`` with the two refusals a user can hit turned into errors that say the fix:
    no safetensors weights (pickled ``.bin`` checkpoints are never loaded: unpickling runs code), and a model that
    needs its own code while ``model.trust_remote_code`` is off."""
    try:
        return auto_class.from_pretrained(str(path), **kwargs)
    except OSError as exc:
        raise FileNotFoundError(
            f"{path}: cannot load {what} with safetensors weights ({str(exc).splitlines()[0]}). Fix: run the stage "
            "that writes it (`dvc repro`), or convert the checkpoint to safetensors (pickled .bin files are refused)."
        ) from None
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        from alignloop.core.config import ConfigError

        raise ConfigError(
            f"{path}: {what} needs code shipped with the checkpoint (config auto_map), and model.trust_remote_code is "
            "false. Fix: use a model with a built-in transformers architecture, or — only if you have read and trust "
            f"that code — set `model: {{trust_remote_code: true}}` in params.yaml."
        ) from None


def load_causal_lm(path: str | Path, model_cfg, *, local: bool = True):
    from transformers import AutoModelForCausalLM

    return from_pretrained(AutoModelForCausalLM, path, "a causal LM", **_load_kwargs(model_cfg, local=local))


def load_reward_model(path: str | Path, model_cfg):
    from transformers import AutoModelForSequenceClassification

    # num_labels=1: a scalar reward; from a causal-LM checkpoint this adds a fresh score head.
    return from_pretrained(AutoModelForSequenceClassification, path, "the reward model", num_labels=1,
                           **_load_kwargs(model_cfg, local=True))


def to_device(model):
    """The model on the first visible CUDA GPU when there is one (inference stages), else unchanged on CPU."""
    import torch

    return model.to("cuda") if torch.cuda.is_available() else model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def set_threads() -> None:
    """Use every core for intra-op work, or OMP_NUM_THREADS of them where it is set: processes sharing a machine
    (the test suite's two workers on two cores) each take one, since OpenMP threads spinning on a core another
    process is using slow every small matmul down."""
    import os

    wanted = os.environ.get("OMP_NUM_THREADS", "")
    n = int(wanted) if wanted.isdigit() and int(wanted) > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
