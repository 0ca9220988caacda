"""The pieces of the Prefect layer that need no Prefect server: the plan read from dvc.yaml, which stages to
hand to DVC, GPU slots across processes, error extraction, and the round artifact."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest
import yaml

from flows.pipeline import _parse_set
from flows.plan import must_run, read_plan, upstream_of
from tasks._proc import deterministic_failure, error_text
from tasks.artifacts import artifact_key, round_markdown, table_columns
from tasks.gpu import device_lock, gpu_devices

REPO = Path(__file__).resolve().parents[1]

STAGES = {
    "a": {"deps": ["src.py"], "outs": ["data/a"]},
    "b": {"deps": ["data/a/part.jsonl"], "outs": ["data/b.jsonl"], "metrics": [{"data/b.json": {"cache": False}}]},
    "c": {"deps": ["data/b.json", "data/a"], "outs": ["data/c"]},
    "d": {"deps": ["data"], "outs": ["report.json"]},  # a dep containing outs
}


def test_upstream_of_matches_paths_inside_and_around_outputs():
    up = upstream_of(STAGES)
    assert up == {"a": set(), "b": {"a"}, "c": {"a", "b"}, "d": {"a", "b", "c"}}


@pytest.mark.parametrize("name, stale, ran, expected", [
    ("b", set(), set(), False),          # nothing changed, nothing upstream ran
    ("b", {"b"}, set(), True),           # DVC said so
    ("b", set(), {"a"}, True),           # upstream ran in this flow run: DVC must look again
    ("b", set(), {"c"}, False),          # a downstream stage running does not matter
    ("d", set(), {"c"}, True),
])
def test_must_run(name, stale, ran, expected):
    assert must_run(name, stale, ran, upstream_of(STAGES)) is expected


def test_read_plan_on_the_committed_dvc_yaml():
    plan = read_plan(REPO, ["r1", "r2", "r3"])
    assert plan.before == ["resolve", "prepare", "curate", "base", "sft", "judge_model", "reward_model", "evaluate_sft"]
    assert plan.rounds["r2"] == ["generate_r2", "score_r2", "pairs_r2", "dpo_r2", "evaluate_r2", "register_r2"]
    assert plan.after == ["report"]
    assert {"sft", "judge_model", "reward_model", "evaluate_sft", "generate_r1", "score_r1", "dpo_r1", "evaluate_r3"} <= plan.gpu
    assert not {"resolve", "prepare", "curate", "base", "pairs_r1", "report"} & plan.gpu
    assert {"pairs_r2", "dpo_r1"} <= plan.upstream["dpo_r2"]       # ref = prev: the previous policy is read
    assert "dpo_r1" in plan.upstream["generate_r2"]


def test_read_plan_of_the_repo_puts_every_stage_in_one_group():
    plan = read_plan(REPO, ["r1", "r2", "r3"])
    grouped = plan.before + [s for v in plan.rounds.values() for s in v] + plan.after
    assert len(grouped) == len(set(grouped)) == 27


def test_read_plan_round_names_with_underscores(tmp_path):
    """Rounds 'up' and 'warm_up': a stage named dpo_warm_up ends with '_up', so a plan read from stage names would
    give it to round 'up' as well; the plan reads each stage's round from its meta."""
    from alignloop.core.config import load_params
    from alignloop.pipeline.render import render_text

    (tmp_path / "params.yaml").write_text("experiment: t\nrounds:\n  warm_up: {algo: dpo, prev: sft}\n"
                                          "  up: {algo: dpo, prev: warm_up}\n  up_2: {algo: ppo, prev: up}\n")
    (tmp_path / "dvc.yaml").write_text(render_text(load_params(tmp_path / "params.yaml")))
    plan = read_plan(tmp_path, ["warm_up", "up", "up_2"])
    assert plan.rounds["warm_up"] and all(s.endswith("_warm_up") for s in plan.rounds["warm_up"])
    assert plan.rounds["up"] and all(s.endswith("_up") and not s.endswith("_warm_up") for s in plan.rounds["up"])
    assert "ppo_up_2" in plan.rounds["up_2"] and all(s.endswith("_up_2") for s in plan.rounds["up_2"])
    grouped = plan.before + [s for v in plan.rounds.values() for s in v] + plan.after
    assert len(grouped) == len(set(grouped))
    assert "dpo_warm_up" in plan.upstream["generate_up"]  # round up samples from warm_up's policy


LOG = [
    "Running stage 'pairs_r1':",
    "> python -m alignloop.pipeline.stages.pairs --round r1",
    "error: data/rounds/r1/scores.jsonl: no prompt produced a pair with margin >= 9 (fix: lower min_margin)",
    "  data/rounds/r1/scores.jsonl:3: second line of the same error",
    "ERROR: failed to reproduce 'pairs_r1': failed to run: python -m alignloop.pipeline.stages.pairs --round r1, exited with 2",
]


def test_error_text_is_the_stage_error_and_dvc_summary():
    assert error_text(LOG) == "\n".join(LOG[2:])
    assert deterministic_failure(LOG)


def test_error_text_of_a_crash_is_the_tail_and_retryable():
    crash = ["Running stage 'dpo_r1':"] + [f"line {i}" for i in range(40)] + [
        "RuntimeError: CUDA out of memory",
        "ERROR: failed to reproduce 'dpo_r1': failed to run: python -m alignloop.pipeline.stages.dpo --round r1, exited with 1"]
    text = error_text(crash)
    assert text.splitlines()[-1].startswith("ERROR:") and "CUDA out of memory" in text
    assert len(text.splitlines()) == 30
    assert not deterministic_failure(crash)


def test_gpu_devices_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_devices(None) == ["2", "3"]
    assert gpu_devices(1) == ["2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_devices(None) == []


def _hold(args):
    lock_dir, devices, hold_s = args
    import os

    os.environ["ALIGNLOOP_GPU_LOCK_DIR"] = lock_dir
    import importlib

    import tasks.gpu as gpu

    importlib.reload(gpu)  # pick up the lock dir in this fresh process
    with gpu.device_lock(devices, poll_s=0.05) as device:
        start = time.time()
        time.sleep(hold_s)
        return device, start, time.time()


def test_device_lock_never_gives_one_gpu_to_two_processes(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        spans = pool.map(_hold, [(str(tmp_path), ["0", "1"], 0.6)] * 4)
    assert {d for d, _, _ in spans} == {"0", "1"}                # both devices used
    for i, (d1, s1, e1) in enumerate(spans):
        for d2, s2, e2 in spans[i + 1:]:
            assert d1 != d2 or e1 <= s2 or e2 <= s1, spans      # one process per device at any time
    # so never more than two at once: four 0.6 s holds need at least two rounds. And the two devices were held at the
    # same time at least once (the lock does not serialise everything onto one slot). No upper bound on the total:
    # the four spawned processes import Prefect first, and on a busy 2-core machine their starts spread by seconds
    # (an upper bound of 2.4 s failed there).
    assert max(e for _, _, e in spans) - min(s for _, s, _ in spans) > 1.1, spans
    assert any(d1 != d2 and s1 < e2 and s2 < e1 for i, (d1, s1, e1) in enumerate(spans)
               for d2, s2, e2 in spans[i + 1:]), spans


def test_device_lock_without_gpus_is_a_no_op():
    with device_lock([]) as device:
        assert device is None


def test_round_markdown_hand_checked():
    md = round_markdown(
        "r2", {"gold_reward": 0.5, "kl_to_sft": 1.25, "length_tokens": 9.04},
        {"gold_reward": 0.1, "kl_to_sft": 0.0}, {"loss_first": 0.69, "loss_last": 0.5},
        {"pairs": 10, "prompts": 12, "yield": 0.8333, "margin_mean": 1.5},
        [{"stage": "generate_r2", "ran": True, "seconds": 12.4}, {"stage": "score_r2", "ran": False, "seconds": 0}],
        {"model_name": "x-policy", "version": "2", "promoted": False, "champion_after": {"round": "r1"},
         "reasons": ["FAIL gold_reward: 0.5000 <= champion 0.6000"]})
    assert "| gold reward (hidden) | 0.100 | 0.500 |" in md
    assert "| KL to SFT | 0.000 | 1.250 |" in md
    assert "| response length (tokens) |  | 9.0 |" in md
    assert "Pairs: 10 from 12 prompts (yield 0.83, mean margin 1.500)." in md
    assert "Training loss 0.6900 → 0.5000." in md
    assert "Registry: `x-policy` version 2, stays candidate (champion: r1).\n- FAIL gold_reward: 0.5000 <= champion 0.6000" in md
    assert "Ran: `generate_r2` (12 s)." in md and "Skipped by DVC (up to date): `score_r2`." in md


def test_round_markdown_of_a_self_play_round_shows_its_win_rates():
    md = round_markdown("s1", {"gold_reward": 0.5}, None, {"loss_first": 0.9, "loss_last": 0.7, "pairs": 93,
                        "prompts": 95, "chosen_win_rate_mean": 0.6143, "rejected_win_rate_mean": 0.366}, None, [])
    assert "Self-play: 93 pairs from 95 prompts, preference-model win-rate 0.614 (chosen) vs 0.366 (rejected)." in md


def test_artifact_key_is_lowercase_dashes():
    assert artifact_key("AlignLoop_demo", "r1") == "alignloop-demo-r1"


def test_parse_set_reads_yaml_scalars():
    assert _parse_set(["dpo.beta=0.2", "data.source=jsonl", "x.flag=true", "x.n=3"]) == {
        "dpo.beta": 0.2, "data.source": "jsonl", "x.flag": True, "x.n": 3}
    with pytest.raises(SystemExit, match="key=value"):
        _parse_set(["dpo.beta"])


def test_retry_only_failures_that_may_be_transient():
    from prefect.states import Failed

    from tasks._proc import StageFailed
    from tasks.stages import _retry_unless_deterministic as retry

    assert retry(None, None, Failed(data=StageFailed("x", 255, "error: bad row", retryable=False))) is False
    assert retry(None, None, Failed(data=StageFailed("x", 255, "Killed", retryable=True))) is True
    assert retry(None, None, Failed(data=OSError("disk hiccup"))) is True


def test_rounds_table_columns_read_policy_then_the_gate_then_the_rest():
    keys = ["distinct_2", "gold_reward", "kl_to_sft", "policy", "proxy_reward", "step", "win_rate_vs_sft_judge", "zeta"]
    assert table_columns(keys, ["win_rate_vs_sft_judge", "kl_to_sft", "not_evaluated"]) == [
        "policy", "win_rate_vs_sft_judge", "kl_to_sft", "gold_reward", "proxy_reward", "distinct_2", "zeta"]


# --- the Prefect form's typed round settings -------------------------------------------------------------------

def test_round_settings_become_the_dotted_keys_of_the_round():
    from flows.forms import RoundSettings, round_overrides

    names, algos = ["r1", "r2"], {"r1": "dpo", "r2": "dpo"}
    assert round_overrides(RoundSettings(), names, algos) == {}
    assert round_overrides(RoundSettings(beta=0.5, n=8), names, algos) == {"rounds.r2.dpo.beta": 0.5,
                                                                          "rounds.r2.generate.n": 8}
    assert round_overrides(RoundSettings(round="r1", algo="ppo", lr=1e-5, iterations=20), names, algos) == {
        "rounds.r1.algo": "ppo", "rounds.r1.ppo.lr": 1e-5, "rounds.r1.ppo.iterations": 20}
    # reinforce_pp trains with the ppo section; grpo with its own
    assert round_overrides(RoundSettings(algo="reinforce_pp", lr=2e-5), names, algos) == {
        "rounds.r2.algo": "reinforce_pp", "rounds.r2.ppo.lr": 2e-5}
    assert round_overrides(RoundSettings(algo="grpo", beta=0.1), names, algos) == {
        "rounds.r2.algo": "grpo", "rounds.r2.grpo.beta": 0.1}
    with pytest.raises(ValueError, match=r"round r2 is a dpo round, which has no iterations \(fix: clear it, or set algo"):
        round_overrides(RoundSettings(iterations=5), names, algos)
    with pytest.raises(ValueError, match=r"'r9': not a round .* raise `rounds` to add it"):
        round_overrides(RoundSettings(round="r9", lr=1e-4), names, algos)


def test_the_form_edits_params_yaml_exactly_as_the_same_dict_of_overrides(tmp_path):
    """Round settings for a round the run adds: the same file, byte for byte, as typing the keys into `overrides`."""
    from alignloop.pipeline.params_edit import edit_params
    from flows.forms import RoundSettings, round_overrides, rounds_after

    text = "experiment: t\nrounds:\n  r1: {algo: ppo, prev: sft}\n"
    names, algos = rounds_after(["r1"], {"r1": "ppo"}, 2)
    assert names == ["r1", "r2"] and algos == {"r1": "ppo", "r2": "ppo"}  # as extend_rounds adds it
    typed, by_hand = tmp_path / "a.yaml", tmp_path / "b.yaml"
    typed.write_text(text)
    by_hand.write_text(text)
    edit_params(typed, rounds=2, overrides=round_overrides(RoundSettings(lr=0.0002, n=6), names, algos))
    edit_params(by_hand, rounds=2, overrides={"rounds.r2.ppo.lr": 0.0002, "rounds.r2.generate.n": 6})
    assert typed.read_text() == by_hand.read_text()
    assert yaml.safe_load(typed.read_text())["rounds"]["r2"] == {"algo": "ppo", "prev": "r1", "ppo": {"lr": 0.0002},
                                                                "generate": {"n": 6}}


def test_the_pipeline_form_has_typed_fields_not_nullable_unions():
    """What the Prefect UI's Custom-run form is drawn from: `rounds` an integer (it was int | None, shown as a type
    to choose before typing), round_settings a model with its fields and their help."""
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline

    schema = parameter_schema(pipeline.fn).model_dump_for_openapi()
    props = schema["properties"]
    assert props["rounds"]["type"] == "integer" and props["rounds"]["default"] == 0
    settings = schema["definitions"]["RoundSettings"]["properties"]
    assert {"round", "algo", "lr", "beta", "epochs", "iterations", "n"} <= set(settings)
    assert "KL strength" in settings["beta"]["description"]
    # No field of the form is a union with null (the UI showed those as 'Property is type "None"').
    nullable = [name for fields in (props, settings) for name, f in fields.items()
                if any(alt.get("type") == "null" for alt in f.get("anyOf", []))]
    assert nullable == [], nullable


def test_the_form_says_what_its_empty_fields_keep():
    """Hand-built resolved params (two rounds, the last a PPO round): each field's description ends with the value
    that leaving it empty keeps; a field the round's algorithm lacks says so."""
    from flows.forms import current_values, with_current_values

    resolved = {"rounds": {
        "r1": {"algo": "dpo", "generate": {"n": 4}, "dpo": {"lr": 5e-4, "beta": 0.3, "epochs": 1.0}},
        "r2": {"algo": "ppo", "generate": {"n": 2}, "ppo": {"lr": 1e-4, "iterations": 40}}}}
    current = current_values(resolved)
    assert current == {"rounds": "2 (r1 dpo, r2 ppo)", "round": "r2", "algo": "ppo", "n": "2", "lr": "0.0001",
                       "iterations": "40", "beta": "none (r2 is a ppo round; dpo/grpo/rloo/dno/lipo rounds only)",
                       "epochs": "none (r2 is a ppo round; dpo/raft/sppo/dno/inpo/lipo rounds only)"}
    schema = {"properties": {"rounds": {"type": "integer", "description": "total number of rounds."},
                             "overrides": {"type": "object", "description": "other params."}},
              "definitions": {"RoundSettings": {"properties": {"beta": {"description": "KL strength."},
                                                               "lr": {}}}}}
    out = with_current_values(schema, current)
    assert out["properties"]["rounds"]["description"] == "total number of rounds. params.yaml now: 2 (r1 dpo, r2 ppo)."
    assert out["properties"]["overrides"] == schema["properties"]["overrides"]
    settings = out["definitions"]["RoundSettings"]["properties"]
    assert settings["beta"]["description"] == ("KL strength. params.yaml now: none (r2 is a ppo round; dpo/grpo/rloo/"
                                               "dno/lipo rounds only).")
    assert settings["lr"]["description"] == "params.yaml now: 0.0001."
    assert schema["properties"]["rounds"]["description"] == "total number of rounds."  # the input is not changed
    assert current_values({"rounds": {}}) == {"rounds": "0"}
    # A reinforce_pp round trains with the ppo section: its fields read (and its overrides write) ppo's keys.
    rpp = {"rounds": {"r1": {"algo": "reinforce_pp", "generate": {"n": 4}, "ppo": {"lr": 2e-4, "iterations": 7}}}}
    assert current_values(rpp)["iterations"] == "7" and current_values(rpp)["lr"] == "0.0002"
