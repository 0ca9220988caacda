"""Stage `base`: the starting model and tokenizer in data/models/base (safetensors).

Embedded: train a byte-level BPE tokenizer on the curated texts and build a tiny Llama-style model from
config. Otherwise: load ``model.name_or_path`` (hub id or local dir) and save it, so every later stage
reads one local, pinned copy.
"""

from __future__ import annotations

import sys

from alignloop import io
from alignloop.modeling import as_messages, build_tiny_model, count_parameters, load_causal_lm, load_tokenizer, train_tokenizer
from alignloop.stages._cli import stage_main
from alignloop.tracking import stage_run

CURATED = "data/curated"
OUT = "data/models/base"


def corpus_texts() -> list[str]:
    texts = []
    for row in io.read_jsonl(f"{CURATED}/sft.jsonl"):
        texts += [m["content"] for m in as_messages(row["prompt"])] + [row["response"]]
    for split in ("train", "eval"):
        for row in io.read_jsonl(f"{CURATED}/prefs/{split}.jsonl", allow_empty=True):
            texts += [m["content"] for m in as_messages(row["prompt"])] + [row["chosen"], row["rejected"]]
    return texts


def run(params, args) -> None:
    m = params.model
    if m.name_or_path == "embedded":
        tokenizer = train_tokenizer(corpus_texts(), m.arch.vocab_size)
        model = build_tiny_model(m.arch, tokenizer, m.max_length, params.seed)
        source = "embedded"
    else:
        tokenizer = load_tokenizer(m.name_or_path, m)
        model = load_causal_lm(m.name_or_path, m, local=False)
        source = m.name_or_path
    with io.atomic_dir(OUT) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    n = count_parameters(model)
    print(f"base: {source} model with {n/1e6:.2f}M parameters, vocab {len(tokenizer)} -> {OUT}/")
    with stage_run(params.experiment, "base", params.model_dump(include={"model", "seed"})) as run:
        run.log_metrics({"parameters": n, "vocab_size": len(tokenizer)})


def main(argv=None) -> int:
    return stage_main("base", run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
