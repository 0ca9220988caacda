"""Stage `base`: the starting model and tokenizer in data/models/base (safetensors).

Embedded: train a byte-level BPE tokenizer on the curated texts and build a tiny Llama-style model from
config. Otherwise: load ``model.name_or_path`` (hub id or local dir) and save it, so every later stage
reads one local, pinned copy.
"""

from __future__ import annotations

import sys

from alignloop.core import files
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.specs import StageSpec
from alignloop.pipeline.tracking import stage_run

OUT = layout.BASE
SPECS = [StageSpec(
    name="base", module="alignloop.pipeline.stages.base", scope="before", order=2,
    help="embedded: train the tokenizer, build the model from model.arch; else load and save model.name_or_path",
    code=("alignloop.ml.modeling",), params=("seed", "model"),
    deps=lambda c: [layout.SFT_DATA, layout.PREFS_TRAIN, layout.PREFS_EVAL], outs=lambda c: [OUT],
)]


def corpus_texts() -> list[str]:
    from alignloop.ml.modeling import as_messages

    texts = []
    for row in files.read_jsonl(layout.SFT_DATA, files.validate_sft, id_key="id"):
        texts += [m["content"] for m in as_messages(row["prompt"])] + [row["response"]]
    for path in (layout.PREFS_TRAIN, layout.PREFS_EVAL):
        for row in files.read_jsonl(path, files.validate_pair, id_key="id", allow_empty=True):
            texts += [m["content"] for m in as_messages(row["prompt"])] + [row["chosen"], row["rejected"]]
    return texts


def run(params, args) -> None:
    from alignloop.ml.modeling import build_tiny_model, count_parameters, load_causal_lm, load_tokenizer, train_tokenizer

    m = params.model
    if m.name_or_path == "embedded":
        tokenizer = train_tokenizer(corpus_texts(), m.arch.vocab_size)
        model = build_tiny_model(m.arch, tokenizer, m.max_length, params.seed)
        source = "embedded"
    else:
        tokenizer = load_tokenizer(m.name_or_path, m)
        model = load_causal_lm(m.name_or_path, m, local=False)
        source = m.name_or_path
    with files.atomic_dir(OUT) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    n = count_parameters(model)
    print(f"base: {source} model with {n/1e6:.2f}M parameters, vocab {len(tokenizer)} -> {OUT}/")
    with stage_run(params.experiment, "base", params.model_dump(include={"model", "seed"})) as run:
        run.log_metrics({"parameters": n, "vocab_size": len(tokenizer)})


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
