"""dvc.yaml rendering: the committed file is fresh, and each stage depends on exactly what it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignloop.core.config import load_params
from alignloop.pipeline.render import HEADER, render, render_file, render_text, stale_message, write_rendered

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


def keys(stage: dict) -> list[str]:
    """The params keys a stage tracks (all of them point into params.resolved.yaml)."""
    entries = stage.get("params", [])
    assert all(list(e) == ["params.resolved.yaml"] for e in entries)
    return [k for e in entries for k in e["params.resolved.yaml"]]


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
        "resolve", "prepare", "curate", "base", "sft", "reward_model", "evaluate_sft",
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
    assert keys(stages["register_r2"]) == ["experiment", "registry", "llm_judge.enabled", "rounds.r2.prev",
                                           "rounds.r2.algo", "rounds.r2.start"]


def test_an_llm_judged_round_gets_a_judge_stage_read_by_register_and_report(tmp_path: Path):
    judge = "llm_judge: {enabled: true, base_url: 'http://127.0.0.1:8000/v1', model: m}\n"
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="sft") + judge)
    order = list(stages)
    assert order.index("evaluate_r2") < order.index("llm_judge_r2") < order.index("register_r2")
    # its samples, SFT's, and every policy r1's registration can leave as champion (with the record that says which)
    assert [d for d in stages["llm_judge_r2"]["deps"] if d.startswith("data/")] == [
        "data/rounds/r2/eval_samples.jsonl", "data/eval/sft_samples.jsonl", "data/rounds/r1/registry.json",
        "data/rounds/r1/eval_samples.jsonl"]
    assert stages["llm_judge_r2"]["metrics"] == [{"data/rounds/r2/llm_judge.json": {"cache": False}}]
    assert "data/rounds/r2/llm_judge.json" in stages["register_r2"]["deps"]
    assert "data/rounds/r2/llm_judge.json" in stages["report"]["deps"]
    assert "llm_judge.concurrency" not in keys(stages["llm_judge_r2"])  # how fast the calls go changes no verdict
    (tmp_path / "off").mkdir()
    assert not [s for s in rendered(tmp_path / "off", TWO_ROUNDS.format(ref="sft")) if s.startswith("llm_judge")]


def test_registry_disabled_renders_no_register_stages(tmp_path: Path):
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="sft") + "registry: {enabled: false}\n")
    assert not [s for s in stages if s.startswith("register")]


def test_start_from_champion_depends_on_the_record_and_every_policy_it_can_name(tmp_path: Path):
    text = TWO_ROUNDS.format(ref="prev").replace("    dpo: {beta: 0.3}\n", "    start: champion\n")
    stages = rendered(tmp_path, text)
    expected = ["data/rounds/r1/registry.json", "data/models/sft", "data/rounds/r1/policy"]
    assert [d for d in stages["generate_r2"]["deps"] if d.startswith("data/") and "prompts" not in d] == expected
    assert [d for d in stages["dpo_r2"]["deps"] if d.startswith("data/") and "pairs" not in d] == expected
    assert "rounds.r2.start" in keys(stages["generate_r2"]) and "rounds.r2.start" in keys(stages["dpo_r2"])
    # the first round has nothing before it: it starts from SFT either way
    assert policy_deps(stages["generate_r1"]) == ["data/models/sft"]


def test_round_override_params_only_on_the_stage_that_reads_them(tmp_path: Path):
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="sft"))
    # r2's dpo section (top-level merged with its override, as params.resolved.yaml holds it): dpo_r2 tracks it,
    # generation/scoring/pairs of r2 do not. Sections left out of params.yaml are tracked by their default values.
    assert keys(stages["dpo_r2"]) == ["seed", "model", "train", "rounds.r2.prev", "rounds.r2.algo", "rounds.r2.start",
                                      "rounds.r2.dpo"]
    assert keys(stages["generate_r2"]) == ["seed", "model", "rounds.r2.prev", "rounds.r2.start", "rounds.r2.generate"]
    for name in ("generate_r2", "score_r2", "pairs_r2"):
        assert "rounds.r2.dpo" not in keys(stages[name])
    # the merged values are what the resolved file holds
    resolved = load_params(tmp_path / "params.yaml").resolved()
    assert resolved["rounds"]["r2"]["dpo"]["beta"] == 0.3 and resolved["rounds"]["r1"]["dpo"]["beta"] == 0.1
    # nothing before the rounds tracks round keys
    for name in ("resolve", "prepare", "curate", "base", "sft", "reward_model", "evaluate_sft"):
        assert not any(p.startswith("rounds") for p in keys(stages[name]))


def test_generate_override_is_tracked_by_generate(tmp_path: Path):
    text = TWO_ROUNDS.format(ref="sft") + "    generate: {n: 8}\n"  # belongs to r2
    stages = rendered(tmp_path, text)
    assert "rounds.r2.generate" in keys(stages["generate_r2"])
    assert "rounds.r2.generate" not in keys(stages["dpo_r2"])


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
    assert list(stages)[:2] == ["resolve", "curate"]
    assert "inputs/prefs.jsonl" in stages["curate"]["deps"]
    assert "data/raw" not in stages["curate"]["deps"]
    # the gold reward belongs to the embedded task only
    assert "alignloop/core/synthetic.py" not in stages["reward_model"]["deps"]
    assert "alignloop/core/synthetic.py" not in stages["evaluate_r1"]["deps"]


def test_embedded_source_curate_depends_on_raw(tmp_path: Path):
    stages = rendered(tmp_path, TWO_ROUNDS.format(ref="sft"))
    assert "data/raw" in stages["curate"]["deps"]
    assert stages["prepare"]["outs"] == ["data/raw"]


def test_render_text_matches_render(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(TWO_ROUNDS.format(ref="sft"), encoding="utf-8")
    assert yaml.safe_load(render_text(load_params(path))) == render(load_params(path))


def test_stale_message(tmp_path: Path):
    params = tmp_path / "params.yaml"
    dvc = tmp_path / "dvc.yaml"
    params.write_text(TWO_ROUNDS.format(ref="sft"), encoding="utf-8")
    assert "alignloop render" in stale_message(params, dvc)  # missing dvc.yaml
    write_rendered(params, dvc)
    assert stale_message(params, dvc) is None and stale_message(params, dvc, values=True) is None
    # a value change does not change the DAG: still fresh; the resolved values are stale until the resolve stage
    # (or `alignloop render`) rewrites them
    params.write_text(TWO_ROUNDS.format(ref="sft").replace("beta: 0.1", "beta: 0.2"), encoding="utf-8")
    assert stale_message(params, dvc) is None
    assert "params.resolved.yaml" in stale_message(params, dvc, values=True)
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


def test_a_reinforce_pp_round_renders_the_ppo_stage_under_its_own_name(tmp_path: Path):
    stages = rendered(tmp_path, "experiment: test\nrounds:\n  p1: {algo: ppo, prev: sft}\n"
                      "  q1: {algo: reinforce_pp, prev: sft, ppo: {samples_per_prompt: 4, baseline: group_mean}}\n")
    assert "reinforce_pp_q1" in stages and "ppo_q1" not in stages and "reinforce_pp_p1" not in stages
    assert not {"generate_q1", "score_q1", "pairs_q1"} & set(stages)  # it samples inside its stage, like ppo
    ppo, rpp = stages["ppo_p1"], stages["reinforce_pp_q1"]
    assert ppo["cmd"] == "python -m alignloop.pipeline.stages.ppo --round p1"
    assert rpp["cmd"] == "python -m alignloop.pipeline.stages.ppo --reinforce-pp --round q1"
    assert rpp["deps"] == ppo["deps"] and rpp["outs"] == ["data/rounds/q1/policy"]
    assert [k.replace("q1", "p1") for k in keys(rpp)] == keys(ppo)
    assert rpp["meta"]["gpu"] is True
    assert "data/rounds/q1/policy" in stages["evaluate_q1"]["deps"]


def test_grpo_and_rloo_rounds_render_one_training_stage_each_with_their_reward_as_inputs(tmp_path: Path):
    stages = rendered(tmp_path, "experiment: test\nreward_model: {ensemble: 2}\nrounds:\n"
                      "  g1: {algo: grpo, prev: sft}\n"
                      "  o2: {algo: rloo, prev: g1, rloo: {ref: prev}, reward: {sources: [{reward_model: 1}, "
                      "{function: 'alignloop.core.reward_functions:length_window', weight: 0.5}]}}\n")
    assert not {f"{s}_{r}" for s in ("generate", "score", "pairs", "dpo") for r in ("g1", "o2")} & set(stages)
    grpo, rloo = stages["grpo_g1"], stages["rloo_o2"]
    assert grpo["cmd"] == "python -m alignloop.pipeline.stages.grpo --round g1"
    assert rloo["cmd"] == "python -m alignloop.pipeline.stages.grpo --rloo --round o2"
    # g1: SFT is start and reference; both reward models (the ensemble); the prompts
    assert [d for d in grpo["deps"] if d.startswith("data/")] == [
        "data/models/sft", "data/models/rm", "data/models/rm-1", "data/curated/prompts/train.jsonl"]
    # o2: starts from g1, which is also its reference; member 1 only; the reward function's module is code
    assert [d for d in rloo["deps"] if d.startswith("data/")] == [
        "data/rounds/g1/policy", "data/models/rm-1", "data/curated/prompts/train.jsonl"]
    assert "alignloop/core/reward_functions.py" in rloo["deps"] and "alignloop/core/reward_functions.py" not in grpo["deps"]
    assert {"rounds.o2.rloo", "rounds.o2.reward", "rounds.o2.score"} <= set(keys(rloo))
    assert rloo["outs"] == ["data/rounds/o2/policy"] and rloo["meta"]["gpu"] is True
    assert "data/rounds/o2/policy" in stages["evaluate_o2"]["deps"]


def test_general_preference_rounds_render_their_stages_and_inputs(tmp_path: Path):
    """sppo/dno/inpo: generate, then the training stage reading the samples and the preference model (no score or
    pairs stage); inpo also reads SFT, its reference; lipo: generate, score, pairs (rankings.jsonl forced) and the
    lipo stage on the rankings. The preference_model stage exists only when it is enabled."""
    stages = rendered(tmp_path, "experiment: test\npreference_model: {enabled: true}\nrounds:\n"
                      "  s1: {algo: sppo, prev: sft}\n  n2: {algo: dno, prev: s1}\n  i3: {algo: inpo, prev: n2}\n"
                      "  l4: {algo: lipo, prev: i3}\n")
    pm = stages["preference_model"]
    assert pm["outs"] == ["data/models/pm"] and "data/curated/prefs/train.jsonl" in pm["deps"]
    for r, algo in (("s1", "sppo"), ("n2", "dno"), ("i3", "inpo")):
        assert {f"generate_{r}", f"{algo}_{r}", f"evaluate_{r}"} <= set(stages)
        assert not {f"score_{r}", f"pairs_{r}"} & set(stages)
        st = stages[f"{algo}_{r}"]
        assert st["cmd"] == f"python -m alignloop.pipeline.stages.selfplay --algo {algo} --round {r}"
        assert st["outs"] == [f"data/rounds/{r}/winrates.jsonl", f"data/rounds/{r}/policy"]
        assert {"data/models/pm", f"data/rounds/{r}/samples.jsonl"} <= set(st["deps"])
        assert f"rounds.{r}.{algo}" in keys(st) and "preference_model.max_length" in keys(st)
    assert policy_deps(stages["inpo_i3"]) == ["data/rounds/n2/policy", "data/models/sft", "data/models/pm"]
    assert policy_deps(stages["dno_n2"]) == ["data/rounds/s1/policy", "data/models/pm"]  # iterate, no reference
    assert {"generate_l4", "score_l4", "pairs_l4", "lipo_l4"} <= set(stages)
    assert "data/rounds/l4/rankings.jsonl" in stages["pairs_l4"]["outs"]
    assert "data/rounds/l4/rankings.jsonl" in stages["lipo_l4"]["deps"]
    assert policy_deps(stages["lipo_l4"]) == ["data/rounds/i3/policy"]  # lipo.ref prev: the start policy
    off = rendered(tmp_path, "experiment: test\nrounds:\n  r1: {algo: dpo, prev: sft}\n")
    assert "preference_model" not in off and "rankings.jsonl" not in str(off["pairs_r1"]["outs"])
