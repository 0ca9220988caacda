"""DVC stage ``curate``: validate, normalize, dedup, filter and split the raw data into data/curated/.

Run from the repo root: ``python -m alignloop.pipeline.stages.curate [--params params.yaml] [--out data/curated]``.

Sources (``data.source`` in params.yaml):

* ``embedded``: data/raw/{prompts,sft,prefs}.jsonl written by the prepare stage, checked with io's validators.
* ``jsonl``:    ``data.path`` is a local JSONL file in a hub shape; each row goes through ``data.adapter``.
* ``hub``:      ``datasets.load_dataset(data.path, split=data.split, revision=data.revision)``; a hub name or
                a local directory in the hub's layout; each row goes through ``data.adapter``.

For jsonl/hub sources the prompts are the distinct prompts of the pairs and the SFT examples are
(prompt, chosen) of the train pairs. Bad rows never stop the stage: they go to quarantine.jsonl with their
file and line, and are counted in metrics.json. The output directory is replaced in one rename.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from alignloop.core.adapters import AdapterError, get_adapter
from alignloop.core.config import ConfigError, DataConfig, Params, load_params
from alignloop.core.curate import Curated, curate, stable_id
from alignloop.core.files import (
    RAW_SHOWN,
    BadRow,
    DataError,
    atomic_dir,
    iter_jsonl,
    split_rows,
    validate_pair,
    validate_prompt,
    validate_prompt_text,
    validate_sft,
    value_problem,
    write_json,
    write_jsonl,
)

from alignloop.pipeline import layout
from alignloop.pipeline.specs import Ctx, StageSpec

RAW_DIR = layout.RAW
OUT_DIR = layout.CURATED


def _source(ctx: Ctx) -> list[str]:
    """The files it reads, when DVC can track them: the raw corpus (embedded) or a local JSONL file, and the
    extra held-out prompts."""
    data, extra = ctx.params.data, ctx.params.curate.extra_eval_prompts
    if data.source == "embedded":
        source = [RAW_DIR]
    else:
        source = [data.path] if data.source == "jsonl" and data.path else []
    return source + ([extra] if extra else [])


SPECS = [StageSpec(
    name="curate", module="alignloop.pipeline.stages.curate", scope="before", order=1,
    help="adapters, validation (bad rows quarantined with file:line), dedup, length filters, train/eval split",
    # core.files holds the row validators: what counts as a bad row is part of what curation computes.
    code=("alignloop.core.adapters", "alignloop.core.curate", "alignloop.core.files"),
    params=("seed", "data", "curate"), deps=_source, outs=lambda c: list(layout.CURATED_FILES),
    metrics=lambda c: [layout.CURATE_METRICS],
)]
SHOW_BAD = 5
SCORE_KEYS = {"chosen_score": ("chosen_score", "score_chosen"), "rejected_score": ("rejected_score", "score_rejected")}


# --- normalizing rows ---------------------------------------------------------------------------


def _norm_prompt(prompt: Any) -> Any:
    """A validated prompt with only ``role`` and ``content`` kept in each message."""
    return prompt if isinstance(prompt, str) else [{"role": m["role"], "content": m["content"]} for m in prompt]


def _scores(raw: dict) -> tuple[dict, str | None]:
    """Optional chosen/rejected scores of a source row, under the contract's names, or the error when one is present
    but is not a finite number (a score is never dropped without a word)."""
    out = {}
    for name, keys in SCORE_KEYS.items():
        for k in keys:
            if k not in raw or raw[k] is None:
                continue
            v = raw[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return {}, (f"field '{k}' is {v!r}, not a finite number (fix: correct it, or remove it or set it to "
                            "null when the row has no score)")
            out[name] = v
            break
    return out, None


def _source_field(raw: dict) -> str | None:
    v = raw.get("source")
    if v is None or (isinstance(v, str) and v.strip()):
        return None
    return f"field 'source' is {v!r}, not a non-empty string (fix: correct it, or remove it)"


def norm_prompt_row(row: dict) -> dict:
    out = {"id": row["id"], "prompt": _norm_prompt(row["prompt"])}
    if isinstance(row.get("meta"), dict):
        out["meta"] = row["meta"]
    return out


def norm_sft_row(row: dict) -> dict:
    return {"id": row["id"], "prompt": _norm_prompt(row["prompt"]), "response": row["response"].strip()}


def norm_pair_row(row: dict, source: str) -> dict:
    out = {
        "id": row["id"],
        "prompt": _norm_prompt(row["prompt"]),
        "chosen": row["chosen"].strip(),
        "rejected": row["rejected"].strip(),
        "source": row["source"] if isinstance(row.get("source"), str) and row["source"] else source,
    }
    out.update(_scores(row)[0])  # validate_embedded_pair has rejected rows with bad scores
    return out


def validate_embedded_pair(row: dict) -> str | None:
    return validate_pair(row) or _source_field(row) or _scores(row)[1]


# --- reading the sources ------------------------------------------------------------------------


def _require_rows(path: str, good: list, bad: list) -> None:
    if not good and not bad:
        raise DataError(f"{path}: the file has no rows (fix: check the input data, or rerun the stage that writes it)")


def read_embedded(raw_dir: str | Path, allow_no_pairs: bool = False) -> tuple[dict[str, list[dict]], list[BadRow]]:
    """Validated rows of data/raw/{prompts,sft,prefs}.jsonl, and the bad rows, keyed by kind."""
    raw_dir = Path(raw_dir)
    rows: dict[str, list[dict]] = {}
    bad: dict[str, list[BadRow]] = {}
    for kind, fname, validate, norm in (
        ("prompts", "prompts.jsonl", validate_prompt, norm_prompt_row),
        ("sft", "sft.jsonl", validate_sft, norm_sft_row),
        ("prefs", "prefs.jsonl", validate_embedded_pair, lambda r: norm_pair_row(r, "annotator")),
    ):
        path = raw_dir / fname
        if not path.exists():
            raise DataError(f"{path}: file not found (fix: run the prepare stage first: `dvc repro prepare`)")
        good, kind_bad = split_rows(path, validate)
        if not (kind == "prefs" and allow_no_pairs):
            _require_rows(str(path), good, kind_bad)
        rows[kind] = [norm(r) for r in good]
        bad[kind] = kind_bad
    return rows, bad


def adapt_rows(
    items: Iterable[tuple[int, str, dict | None, str | None]], file: str, adapter_name: str, source: str
) -> tuple[list[dict], list[BadRow]]:
    """Run ``(line, raw, row, read_error)`` items through an adapter into pair rows; bad rows are BadRows.

    A row's own ``id`` is kept (duplicates are bad rows); rows without one get a hash of their content.
    """
    adapter = get_adapter(adapter_name)
    good: list[dict] = []
    bad: list[BadRow] = []
    seen: dict[Any, int] = {}
    for line, raw, row, err in items:
        pair = None
        if err is None:
            try:
                pair = adapter(row)
            except AdapterError as exc:
                err = str(exc)
        if pair is not None:
            rid = row.get("id")
            if rid is None:
                pair["id"] = stable_id(pair["prompt"], pair["chosen"], pair["rejected"])
            elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
                err = f"field 'id' must be a string or integer, got {type(rid).__name__} (fix: correct it or remove it)"
            elif rid in seen:
                err = f"duplicate id {rid!r} (first at line {seen[rid]}) (fix: give every row a unique id)"
            else:
                pair["id"] = rid
                seen[rid] = line
            if err is None:
                scores, err = _scores(row)
                err = err or _source_field(row)
            if err is None:
                pair["source"] = row["source"] if isinstance(row.get("source"), str) else source
                pair.update(scores)
                err = validate_pair(pair)
        if err is None:
            good.append(pair)
        else:
            bad.append(BadRow(file, line, raw, err))
    return good, bad


def _limit(items: Iterable, max_rows: int | None) -> Iterator:
    for i, item in enumerate(items):
        if max_rows is not None and i >= max_rows:
            return
        yield item


def read_jsonl_source(data: DataConfig) -> tuple[list[dict], list[BadRow]]:
    """Pairs from a local JSONL file in a hub shape (``data.path``) through ``data.adapter``."""
    path = Path(data.path)
    rows = iter_jsonl(path, "set data.path in params.yaml to an existing .jsonl file")  # which checks the path
    good, bad = adapt_rows(_limit(rows, data.max_rows), str(path), data.adapter, f"jsonl:{path.name}")
    _require_rows(str(path), good, bad)
    return good, bad


def load_hub_rows(data: DataConfig) -> list[dict]:
    """Rows of ``datasets.load_dataset(data.path, split, revision)``, at most ``data.max_rows``."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise DataError(f"data.source 'hub' needs the 'datasets' package ({exc}) (fix: pip install datasets)") from None
    try:
        ds = datasets.load_dataset(data.path, split=data.split, revision=data.revision)
    except Exception as exc:  # datasets raises many types: not found, offline, bad split, bad files
        raise DataError(
            f"{data.path}: cannot load split '{data.split}'"
            + (f" at revision {data.revision}" if data.revision else "")
            + f": {type(exc).__name__}: {exc} "
            "(fix: check data.path/data.split/data.revision; offline, the dataset must be a local directory or cached)"
        ) from None
    if data.max_rows is not None and len(ds) > data.max_rows:
        ds = ds.select(range(data.max_rows))
    return [dict(r) for r in ds]


def _hub_item(line: int, row: dict) -> tuple[int, str, dict | None, str | None]:
    """A datasets row as an adapt_rows item: the same value checks as a JSONL row (depth, strings, non-finite
    floats, which Arrow can hold), and its raw text for the quarantine."""
    err = value_problem(row)
    try:
        raw = json.dumps(row, ensure_ascii=False, default=str) if err is None else repr(row)[:RAW_SHOWN]
    except (TypeError, ValueError, RecursionError) as exc:
        raw, err = repr(row)[:RAW_SHOWN], f"cannot be written as JSON: {exc} (fix: convert the column to text)"
    return line, raw, (row if err is None else None), err


def read_hub_source(data: DataConfig) -> tuple[list[dict], list[BadRow]]:
    """Pairs from a hub dataset (or a local directory in hub layout) through ``data.adapter``."""
    rows = load_hub_rows(data)
    items = (_hub_item(i + 1, r) for i, r in enumerate(rows))
    good, bad = adapt_rows(items, data.path, data.adapter, f"hub:{data.path}")
    if not rows:
        raise DataError(f"{data.path}: split '{data.split}' has no rows (fix: check data.path and data.split)")
    return good, bad


def read_extra_eval_prompts(path: str) -> tuple[list[dict], list[BadRow]]:
    """Rows of curate.extra_eval_prompts: ``{"prompt": text or messages}`` per line, any other fields ignored.

    Each gets a content-hash id (prefix 'x'), so it cannot collide with the source's ids; its own id, if any,
    is kept as meta.source_id.
    """
    good, bad = split_rows(path, validate_prompt_text, id_key=None,
                           fix_missing="set curate.extra_eval_prompts in params.yaml to an existing .jsonl file of "
                           "{\"prompt\": ...} rows, or to null")
    _require_rows(path, good, bad)
    rows = []
    for r in good:
        row = {"id": stable_id(r["prompt"], prefix="x"), "prompt": _norm_prompt(r["prompt"])}
        if isinstance(r.get("id"), (str, int)) and not isinstance(r.get("id"), bool):
            row["meta"] = {"source_id": r["id"]}
        rows.append(row)
    return rows, bad


# --- the stage ----------------------------------------------------------------------------------


def _bad_lines(bad: list[BadRow], n: int = SHOW_BAD) -> str:
    shown = "\n".join(f"  {b}" for b in bad[:n])
    more = f"\n  ... and {len(bad) - n} more" if len(bad) > n else ""
    return shown + more


def run_curation(params: Params, raw_dir: str | Path = RAW_DIR) -> tuple[Curated, list[BadRow]]:
    """Read the configured source and curate it; DataError if nothing usable remains."""
    data = params.data
    extra, extra_bad = (read_extra_eval_prompts(params.curate.extra_eval_prompts)
                        if params.curate.extra_eval_prompts else (None, []))
    if data.source == "embedded":
        allow_no_pairs = params.task.pairs_per_prompt == 0
        rows, bad_by_kind = read_embedded(raw_dir, allow_no_pairs)
        bad = [b for k in ("prompts", "sft", "prefs") for b in bad_by_kind[k]]
        quarantined = {k: len(v) for k, v in bad_by_kind.items()} | {"extra_eval": len(extra_bad)}
        result = curate(rows["prompts"], rows["sft"], rows["prefs"], params.curate, params.seed,
                        quarantined=quarantined, extra_eval=extra)
        origin = str(raw_dir)
    else:
        if not data.path:
            raise ConfigError(
                f"params.yaml: data.path is required when data.source is '{data.source}' "
                "(fix: set data.path to a .jsonl file, a dataset name or a local dataset directory)"
            )
        allow_no_pairs = False
        pairs, bad = read_jsonl_source(data) if data.source == "jsonl" else read_hub_source(data)
        result = curate(None, None, pairs, params.curate, params.seed,
                        quarantined={"prefs": len(bad), "extra_eval": len(extra_bad)}, extra_eval=extra)
        origin = data.path
    bad = bad + extra_bad

    m = result.metrics
    why = (
        f"{m['input_rows']} input rows: {m['quarantined']} quarantined, {m['duplicates_removed']} duplicates, "
        f"{m['too_long_dropped']} too long, {m['too_short_dropped']} too short"
    )
    bad_note = f"\nfirst bad rows:\n{_bad_lines(bad)}" if bad else ""
    if not m["train_prompts"] or not m["eval_prompts"]:
        raise DataError(
            f"{origin}: {m['train_prompts'] + m['eval_prompts']} valid distinct prompt(s) remain; need at least 2 "
            f"(one for training, one for evaluation) ({why}) (fix: correct the bad rows or relax the curate "
            f"length limits){bad_note}"
        )
    if not m["sft_train_rows"]:
        raise DataError(f"{origin}: no SFT examples remain for training ({why}) (fix: correct the input){bad_note}")
    if not m["pref_train_rows"] and not allow_no_pairs:
        raise DataError(f"{origin}: no preference pairs remain for training ({why}) (fix: correct the input){bad_note}")
    return result, bad


def write_outputs(out: str | Path, result: Curated, bad: list[BadRow]) -> None:
    """Write the whole output directory atomically."""
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "prompts" / "train.jsonl", result.prompts_train)
        write_jsonl(tmp / "prompts" / "eval.jsonl", result.prompts_eval)
        write_jsonl(tmp / "sft.jsonl", result.sft)
        write_jsonl(tmp / "prefs" / "train.jsonl", result.prefs_train)
        write_jsonl(tmp / "prefs" / "eval.jsonl", result.prefs_eval)
        write_jsonl(tmp / "prefs" / "judge.jsonl", result.prefs_judge)
        write_jsonl(tmp / "quarantine.jsonl", (b.as_quarantine() for b in bad))
        write_json(tmp / "metrics.json", result.metrics)


def summary_line(m: dict, out: str | Path) -> str:
    filtered = m["too_long_dropped"] + m["too_short_dropped"]
    return (
        f"curate: {m['train_prompts']} train / {m['eval_prompts']} eval prompts, {m['sft_train_rows']} sft rows, "
        f"{m['pref_train_rows']} train / {m['pref_eval_rows']} eval pairs from {m['input_rows']} input rows "
        f"({m['quarantined']} quarantined, {m['duplicates_removed']} duplicates, {filtered} filtered, "
        f"{m['eval_prompt_rows_removed_from_train']} eval-prompt sft rows removed) -> {out}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m alignloop.pipeline.stages.curate", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--out", default=OUT_DIR, help=f"output directory (default: {OUT_DIR})")
    ap.add_argument("--raw", default=RAW_DIR, help=f"embedded source: raw corpus directory (default: {RAW_DIR})")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from alignloop.pipeline.tracking import live_run, stage_run

    try:
        params = load_params(args.params)
        # The execution's MLflow run is open for all of it (FAILED with the error, KILLED if killed), as stage_main
        # opens it for the other stages.
        with live_run(params.experiment, "curate", "curate"):
            result, bad = run_curation(params, args.raw)
            write_outputs(args.out, result, bad)
            print(summary_line(result.metrics, args.out))
            if bad:
                print(
                    f"warning: {len(bad)} bad row(s) quarantined:\n{_bad_lines(bad)}\n"
                    f"  see {Path(args.out) / 'quarantine.jsonl'}",
                    file=sys.stderr,
                )
            with stage_run(params.experiment, "curate", params.model_dump(include={"data", "curate", "seed"})) as run:
                run.log_metrics(result.metrics)
                run.log_artifact(Path(args.out) / "metrics.json")
    except (DataError, ConfigError, FileNotFoundError) as exc:
        # Known problems end with the message (it names the file, line and fix), not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
