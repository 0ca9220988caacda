"""Stage `prepare`: write the embedded task's raw corpus (prompts, demonstrations, annotated pairs)."""

from __future__ import annotations

import sys

from alignloop import io
from alignloop.stages._cli import stage_main
from alignloop.task import make_corpus
from alignloop.tracking import stage_run

OUT = "data/raw"


def run(params, args) -> None:
    t = params.task
    corpus = make_corpus(t.num_prompts, t.sft_per_prompt, t.pairs_per_prompt, t.annotator_temperature,
                         t.good_demo_fraction, params.seed)
    with io.atomic_dir(OUT) as tmp:
        for name, rows in corpus.items():
            io.write_jsonl(tmp / f"{name}.jsonl", rows)
    counts = {name: len(rows) for name, rows in corpus.items()}
    print(f"prepare: wrote {counts} to {OUT}/")
    with stage_run(params.experiment, "prepare", params.model_dump(include={"task", "seed"})) as run:
        run.log_metrics({f"rows.{k}": v for k, v in counts.items()})


def main(argv=None) -> int:
    return stage_main("prepare", run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
