"""params.yaml edits made by flow runs: overrides, added rounds, validation before writing."""

from __future__ import annotations

import pytest
import yaml

from alignloop.core.config import ConfigError
from alignloop.pipeline.params_edit import edit_params, next_round_name

TEXT = """\
experiment: t          # the experiment
dpo:
  beta: 0.3            # keep this comment
rounds:
  r1: {algo: dpo, prev: sft}
  r2: {algo: dpo, prev: r1, dpo: {beta: 0.5}}
  r3: {algo: dpo, prev: r2}
"""


@pytest.fixture
def params(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(TEXT)
    return p


def test_rounds_5_after_3_appends_two_chained_rounds(params):
    out = edit_params(params, rounds=5)
    assert out["added_rounds"] == ["r4", "r5"]
    raw = yaml.safe_load(params.read_text())
    assert list(raw["rounds"]) == ["r1", "r2", "r3", "r4", "r5"]
    assert raw["rounds"]["r4"] == {"algo": "dpo", "prev": "r3"}
    assert raw["rounds"]["r5"] == {"algo": "dpo", "prev": "r4"}
    assert list(out["params"].rounds) == ["r1", "r2", "r3", "r4", "r5"]
    # The file is edited, not rewritten: comments and the other rounds' overrides survive.
    text = params.read_text()
    assert "# keep this comment" in text and "# the experiment" in text
    assert raw["rounds"]["r2"]["dpo"] == {"beta": 0.5}


def test_same_rounds_and_no_overrides_leave_file_untouched(params):
    before = params.stat().st_mtime_ns
    out = edit_params(params, rounds=3, overrides={"dpo.beta": 0.3})
    assert out["changed"] == [] and out["added_rounds"] == []
    assert params.stat().st_mtime_ns == before and params.read_text() == TEXT


def test_fewer_rounds_than_params_is_an_error(params):
    with pytest.raises(ConfigError, match=r"has 3 rounds .* asked for 2 .*fix:"):
        edit_params(params, rounds=2)
    assert params.read_text() == TEXT


def test_overrides_set_nested_keys_and_create_sections(params):
    out = edit_params(params, overrides={"dpo.beta": 0.2, "rounds.r3.dpo.lr": 1e-4, "generate.n": 8})
    assert sorted(out["changed"]) == ["dpo.beta", "generate.n", "rounds.r3.dpo.lr"]
    raw = yaml.safe_load(params.read_text())
    assert raw["dpo"]["beta"] == 0.2 and raw["generate"] == {"n": 8}
    assert raw["rounds"]["r3"]["dpo"] == {"lr": 1e-4}
    assert out["params"].round_section("r3", "dpo").lr == 1e-4


def test_bad_overrides_are_all_reported_and_nothing_is_written(params):
    with pytest.raises(ConfigError) as err:
        edit_params(params, overrides={"dpo.beta": -1, "generate.nn": 3})
    msg = str(err.value)
    assert "dpo.beta" in msg and "generate.nn" in msg          # both problems, at once
    assert "with the run's overrides" in msg and ".candidate" not in msg
    assert params.read_text() == TEXT
    assert not list(params.parent.glob(".params.yaml*"))


def test_override_through_a_value_is_an_error(params):
    with pytest.raises(ConfigError, match="'experiment' is a value, not a section"):
        edit_params(params, overrides={"experiment.name": "x"})


def test_new_round_names_skip_taken():
    assert next_round_name(["r1", "r2"]) == "r3"
    assert next_round_name(["warmup", "r7"]) == "r8"
    assert next_round_name([]) == "r1"


def test_new_rounds_repeat_the_last_rounds_algorithm_not_the_default(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("experiment: t\nrounds:\n  r1: {algo: dpo, prev: sft}\n  r2: {algo: ppo, prev: r1}\n")
    added = edit_params(p, rounds=4)["added_rounds"]
    raw = yaml.safe_load(p.read_text())["rounds"]
    assert added == ["r3", "r4"]
    assert raw["r3"] == {"algo": "ppo", "prev": "r2"} and raw["r4"] == {"algo": "ppo", "prev": "r3"}  # not dpo


def test_rounds_added_to_empty_params_start_from_sft(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("experiment: t\n")
    edit_params(p, rounds=2)
    raw = yaml.safe_load(p.read_text())
    assert raw["rounds"] == {"r1": {"algo": "dpo", "prev": "sft"}, "r2": {"algo": "dpo", "prev": "r1"}}


def test_an_edit_changes_only_the_lines_of_the_keys_it_sets(tmp_path):
    """On the project's own params.yaml (comments, flow-style rounds, nulls): setting one round's beta changes that
    one line and nothing else — a `null` elsewhere stays `null` (it used to be rewritten as an empty value)."""
    import difflib
    from pathlib import Path

    original = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    assert ": null" in original
    p = tmp_path / "params.yaml"
    p.write_text(original)
    out = edit_params(p, overrides={"dpo.beta": 0.25})
    assert out["changed"] == ["dpo.beta"]
    diff = [line for line in difflib.unified_diff(original.splitlines(), p.read_text().splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert len(diff) == 2 and diff[0].startswith("-  beta:") and diff[1].startswith("+  beta: 0.25"), diff


def test_an_override_may_set_a_round_the_same_run_adds(params):
    out = edit_params(params, rounds=4, overrides={"rounds.r4.dpo.lr": 1e-4})
    assert out["added_rounds"] == ["r4"]
    r4 = yaml.safe_load(params.read_text())["rounds"]["r4"]
    assert r4 == {"algo": "dpo", "prev": "r3", "dpo": {"lr": 1e-4}}
