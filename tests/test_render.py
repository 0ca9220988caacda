"""dvc.yaml rendering: the committed file is fresh, and each stage depends on exactly what it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignloop.core.config import load_params
from alignloop.pipeline.render import HEADER, render, render_file, render_text, stale_message

REPO = Path(__file__).resolve().parents[1]

TWO_ROUNDS = """\
experiment: test
seed: 0
dpo:
  beta: 0.1
  ref: {ref}
rounds:
  r1:
    algo: dpo
    prev: sft
  r2:
    algo: dpo
    prev: r1
    dpo: {{beta: 0.3}}
"""


def rendered(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    out = render_file(path)
    assert out.startswith(HEADER)
    return yaml.safe_load(out)["stages"]


def policy_deps(stage: dict) -> list[str]:
    return [d for d in stage["deps"] if d.startswith("data/models/") or d.endswith("/policy")]


def test_committed_dvc_yaml_is_not_stale():
    """dvc.yaml must equal the render of params.yaml (fix: `alignloop render`)."""
    expected = render_file(REPO / "params.yaml")
    assert (REPO / "dvc.yaml").read_text(encoding="utf-8") == expected, "dvc.yaml is stale: run `alignloop render`"
    assert stale_message(REPO / "params.yaml", REPO / "dvc.yaml") is None


def test_stage_names_for_two_rounds(tmp_path: Path):
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="sft"))
    assert list(stages) == [
        "prepare", "curate", "base", "sft", "reward_model", "evaluate_sft",
        "generate_r1", "score_r1", "pairs_r1", "dpo_r1", "evaluate_r1", "register_r1",
        "generate_r2", "score_r2", "pairs_r2", "dpo_r2", "evaluate_r2", "register_r2",
        "report",
    ]
    assert stages["report"]["deps"][-3:] == ["data/eval/sft.json", "data/rounds/r1/eval.json", "data/rounds/r2/eval.json"]


def test_register_chains_on_the_previous_rounds_record(tmp_path: Path):
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="sft"))
    assert stages["register_r1"]["deps"][-3:] == ["data/rounds/r1/eval.json", "data/rounds/r1/policy", "data/eval/sft.json"]
    assert stages["register_r2"]["deps"][-1] == "data/rounds/r1/registry.json"
    assert stages["register_r2"]["outs"] == [{"data/rounds/r2/registry.json": {"cache": False}}]
    assert stages["register_r2"]["params"] == ["experiment", "rounds.r2.prev", "rounds.r2.algo"]


def test_registry_disabled_renders_no_register_stages(tmp_path: Path):
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="sft") + "registry: {enabled: false}\n")
    assert not [s for s in stages if s.startswith("register")]


def test_start_from_champion_depends_on_the_record_and_every_policy_it_can_name(tmp_path: Path):
    text = TWO_ROUNDS.format(ref="prev").replace("    dpo: {beta: 0.3}\n", "    start: champion\n")
    stages = rendered(tmp_path, text)
    expected = ["data/rounds/r1/registry.json", "data/models/sft", "data/rounds/r1/policy"]
    assert [d for d in stages["generate_r2"]["deps"] if d.startswith("data/") and "prompts" not in d] == expected
    assert [d for d in stages["dpo_r2"]["deps"] if d.startswith("data/") and "pairs" not in d] == expected
    assert "rounds.r2.start" in stages["generate_r2"]["params"] and "rounds.r2.start" in stages["dpo_r2"]["params"]
    # the first round has nothing before it: it starts from SFT either way
    assert policy_deps(stages["generate_r1"]) == ["data/models/sft"]


def test_round_override_params_only_on_the_stage_that_reads_them(tmp_path: Path):
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="sft"))
    # r2 has a dpo override: dpo_r2 tracks it, generation/scoring/pairs of r2 do not
    assert "rounds.r2.dpo" in stages["dpo_r2"]["params"]
    # (`model` and `generate` are absent from this params.yaml, and DVC refuses params keys that are missing)
    assert stages["dpo_r2"]["params"] == ["seed", "dpo", "rounds.r2.algo", "rounds.r2.prev", "rounds.r2.dpo"]
    assert stages["generate_r2"]["params"] == ["seed", "rounds.r2.prev"]
    for name in ("generate_r2", "score_r2", "pairs_r2"):
        assert "rounds.r2.dpo" not in stages[name]["params"]
    # r1 has no dpo key: nothing to track (a missing key cannot be a DVC param)
    assert "rounds.r1.dpo" not in stages["dpo_r1"]["params"]
    # nothing before the rounds tracks round keys
    for name in ("prepare", "curate", "base", "sft", "reward_model", "evaluate_sft"):
        assert not any(p.startswith("rounds") for p in stages[name].get("params", []))


def test_generate_override_is_tracked_by_generate(tmp_path: Path):
    text = TWO_ROUNDS.format(ref="sft") + "    generate: {n: 8}\n"  # belongs to r2
    stages = rendered(tmp_path, text)
    assert "rounds.r2.generate" in stages["generate_r2"]["params"]
    assert "rounds.r2.generate" not in stages["dpo_r2"]["params"]


def test_ref_prev_depends_on_previous_policy_only(tmp_path: Path):
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="prev"))
    assert policy_deps(stages["dpo_r2"]) == ["data/rounds/r1/policy"]
    assert policy_deps(stages["dpo_r1"]) == ["data/models/sft"]  # prev of r1 is sft
    assert policy_deps(stages["generate_r2"]) == ["data/rounds/r1/policy"]


def test_ref_sft_adds_sft_model(tmp_path: Path):
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="sft"))
    assert policy_deps(stages["dpo_r2"]) == ["data/rounds/r1/policy", "data/models/sft"]
    assert policy_deps(stages["dpo_r1"]) == ["data/models/sft"]  # not listed twice


def test_per_round_ref_override(tmp_path: Path):
    text = TWO_ROUNDS.format(ref="sft").replace("dpo: {beta: 0.3}", "dpo: {beta: 0.3, ref: prev}")
    stages = rendered(tmp_path, text)
    assert policy_deps(stages["dpo_r2"]) == ["data/rounds/r1/policy"]


def test_jsonl_source_drops_prepare(tmp_path: Path):
    text = TWO_ROUNDS.format(ref="sft") + "data:\n  source: jsonl\n  path: inputs/prefs.jsonl\n"
    stages = rendered(tmp_path, text)
    assert "prepare" not in stages
    assert list(stages)[0] == "curate"
    assert "inputs/prefs.jsonl" in stages["curate"]["deps"]
    assert "data/raw" not in stages["curate"]["deps"]
    # the gold reward belongs to the embedded task only
    assert "alignloop/task.py" not in stages["reward_model"]["deps"]
    assert "alignloop/task.py" not in stages["evaluate_r1"]["deps"]


def test_embedded_source_curate_depends_on_raw(tmp_path: Path):
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="sft"))
    assert "data/raw" in stages["curate"]["deps"]
    assert stages["prepare"]["outs"] == ["data/raw"]


def test_render_text_matches_render(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(TWO_ROUNDS.format(ref="sft"), encoding="utf-8")
    raw = yaml.safe_load(path.read_text())
    assert yaml.safe_load(render_text(load_params(path), raw)) == render(load_params(path), raw)


def test_stale_message(tmp_path: Path):
    params = tmp_path / "params.yaml"
    dvc = tmp_path / "dvc.yaml"
    params.write_text(TWO_ROUNDS.format(ref="sft"), encoding="utf-8")
    assert "alignloop render" in stale_message(params, dvc)  # missing dvc.yaml
    dvc.write_text(render_file(params), encoding="utf-8")
    assert stale_message(params, dvc) is None
    # a value change does not change the DAG: still fresh
    params.write_text(TWO_ROUNDS.format(ref="sft").replace("beta: 0.1", "beta: 0.2"), encoding="utf-8")
    assert stale_message(params, dvc) is None
    # a new round does
    params.write_text(TWO_ROUNDS.format(ref="sft") + "  r3:\n    prev: r2\n", encoding="utf-8")
    msg = stale_message(params, dvc)
    assert msg is not None and "alignloop render" in msg
    # so does a hand edit of dvc.yaml
    params.write_text(TWO_ROUNDS.format(ref="sft"), encoding="utf-8")
    dvc.write_text(render_file(params) + "# edited\n", encoding="utf-8")
    assert "alignloop render" in stale_message(params, dvc)


def test_render_rejects_invalid_params(tmp_path: Path):
    from alignloop.core.config import ConfigError

    path = tmp_path / "params.yaml"
    path.write_text("rounds:\n  r1:\n    prev: r0\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        render_file(path)
