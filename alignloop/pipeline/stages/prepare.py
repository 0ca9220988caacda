"""Stage `prepare`: write the embedded task's raw corpus (prompts, demonstrations, annotated pairs)."""

from __future__ import annotations

import sys

from alignloop.core import files
from alignloop.core.synthetic import make_corpus
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.specs import StageSpec
from alignloop.pipeline.tracking import stage_run

OUT = layout.RAW
SPECS = [StageSpec(
    name="prepare", module="alignloop.pipeline.stages.prepare", scope="before", order=0, help="embedded task: write the synthetic raw corpus",
    code=("alignloop.core.synthetic",), params=("seed", "task"), outs=lambda c: [OUT],
    applies=lambda c: c.params.data.source == "embedded",
)]


def run(params, args) -> None:
    t = params.task
    corpus = make_corpus(t.num_prompts, t.sft_per_prompt, t.pairs_per_prompt, t.annotator_temperature,
                         t.good_demo_fraction, params.seed, intransitive=t.intransitive)
    with files.atomic_dir(OUT) as tmp:
        for name, rows in corpus.items():
            files.write_jsonl(tmp / f"{name}.jsonl", rows)
    counts = {name: len(rows) for name, rows in corpus.items()}
    print(f"prepare: wrote {counts} to {OUT}/")
    with stage_run(params.experiment, "prepare", params.model_dump(include={"task", "seed"})) as run:
        run.log_metrics({f"rows.{k}": v for k, v in counts.items()})


def main(argv=None) -> int:
    return stage_main(SPECS[0], run, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
