"""params.yaml loading: defaults, every problem listed at once with its key path and line, frozen configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from alignloop.core import config as cfg
from alignloop.core.config import ConfigError, DPOConfig, Params, field_help, load_params

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(message: str) -> list[str]:
    """The problem lines of a ConfigError message (after the 'N problem(s):' header)."""
    return [line.strip() for line in message.splitlines()[1:]]


# --- loading ----------------------------------------------------------------------------------------


def test_defaults_load(tmp_path: Path):
    p = load_params(write(tmp_path, "seed: 3\n"))
    assert p.seed == 3
    assert p == Params(seed=3)
    assert (p.dpo.beta, p.dpo.ref, p.generate.n, p.pairs.min_margin) == (0.1, "sft", 4, 0.1)
    assert p.model.arch.hidden_size == 192
    assert p.rounds == {}
    # an empty file (or only comments) is all defaults
    assert load_params(write(tmp_path, "# nothing\n")) == Params()


def test_repo_params_load():
    p = load_params(REPO / "params.yaml")
    assert list(p.rounds) and all(r.algo == "dpo" for r in p.rounds.values())
    first = next(iter(p.rounds.values()))
    assert first.prev == "sft"


# line numbers are the point of this file: keep them in sync with the comments
SEVERAL = """\
experiment: test
seed: 0
colour: blue
sft:
  lrr: 0.1
dpo:
  beta: "high"
generate:
  n: 0
rounds:
  r1:
    prev: sft
    dpo: {beta: -2}
  r2:
    prev: r9
"""
# 3: unknown top-level key      5: unknown nested key       7: wrong type
# 9: impossible value           13: bad per-round override  15: prev names a missing round


def test_several_problems_are_all_listed_with_lines(tmp_path: Path):
    path = write(tmp_path, SEVERAL)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    msg = str(info.value)
    found = problems(msg)
    assert msg.startswith(f"{path}: 6 problem(s):"), msg
    expected = {
        "colour": 3,
        "sft.lrr": 5,
        "dpo.beta": 7,
        "generate.n": 9,
        "rounds.r1.dpo.beta": 13,
        "rounds.r2.prev": 15,
    }
    for key, line in expected.items():
        assert any(p.startswith(f"{path}:{line}: {key}: ") for p in found), f"{key} at line {line} not in:\n{msg}"
    assert len(found) == 6
    assert all("(fix:" in p for p in found), msg
    assert "'high'" in msg  # the offending value is shown
    assert "'r9'" in msg


def test_round_problems_alone_have_lines(tmp_path: Path):
    text = (
        "dpo:\n"                        # 1
        "  beta: 0.1\n"                 # 2
        "rounds:\n"                     # 3
        "  r1:\n"                       # 4
        "    prev: sft\n"               # 5
        "    dpo: {beta: -1}\n"         # 6
        "  r2:\n"                       # 7
        "    prev: r3\n"                # 8
        "  sft:\n"                      # 9
        "    prev: r1\n"                # 10
        "    generate: {n: 0}\n"        # 11
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    found = problems(str(info.value))
    assert len(found) == 4, str(info.value)
    assert any(p.startswith(f"{path}:6: rounds.r1.dpo.beta: ") for p in found), found
    assert any(p.startswith(f"{path}:8: rounds.r2.prev: ") for p in found), found
    assert any(p.startswith(f"{path}:9: rounds.sft: ") for p in found), found  # reserved name
    assert any(p.startswith(f"{path}:11: rounds.sft.generate.n: ") for p in found), found


def test_round_override_unknown_key(tmp_path: Path):
    path = write(tmp_path, "rounds:\n  r1:\n    prev: sft\n    dpo:\n      betta: 0.2\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert f"{path}:5: rounds.r1.dpo.betta: " in str(info.value)


def test_model_level_check_names_its_section(tmp_path: Path):
    path = write(tmp_path, "model:\n  arch:\n    hidden_size: 100\n    num_heads: 6\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert f"{path}:2: model.arch: " in str(info.value)
    assert "not divisible" in str(info.value)


def test_impossible_values(tmp_path: Path):
    path = write(tmp_path, "dpo:\n  beta: -1\ncurate:\n  eval_fraction: 1.5\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    msg = str(info.value)
    assert f"{path}:2: dpo.beta: " in msg and "greater than 0" in msg and "(got -1)" in msg
    assert f"{path}:4: curate.eval_fraction: " in msg


def test_round_missing_prev(tmp_path: Path):
    path = write(tmp_path, "rounds:\n  r1:\n    algo: dpo\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert f"{path}:2: rounds.r1.prev: Field required" in str(info.value)


def test_invalid_yaml(tmp_path: Path):
    path = write(tmp_path, "dpo:\n  beta: [0.1\nsft: {\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_top_level_not_a_mapping(tmp_path: Path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: not found"):
        load_params(tmp_path / "nope.yaml")


# --- behaviour of the loaded config -----------------------------------------------------------------


def test_round_section_merges_overrides_over_defaults(tmp_path: Path):
    path = write(tmp_path, "dpo:\n  beta: 0.1\n  lr: 0.001\nrounds:\n  r1:\n    prev: sft\n"
                           "  r2:\n    prev: r1\n    dpo: {beta: 0.3, ref: prev}\n    generate: {n: 8}\n")
    p = load_params(path)
    d1 = p.round_section("r1", "dpo")
    d2 = p.round_section("r2", "dpo")
    assert isinstance(d2, DPOConfig)
    assert d1 == p.dpo
    # beta and ref from the round, lr from the top-level section, the rest from the defaults
    assert (d2.beta, d2.ref, d2.lr, d2.loss_type, d2.batch_size) == (0.3, "prev", 0.001, "sigmoid", 16)
    assert p.round_section("r2", "generate").n == 8
    assert p.round_section("r2", "generate").max_new_tokens == p.generate.max_new_tokens
    assert p.dpo.beta == 0.1  # the top level is unchanged
    with pytest.raises(KeyError):
        p.round_section("r9", "dpo")


def test_policy_dir():
    from alignloop.pipeline.layout import policy_dir

    assert policy_dir("sft") == "data/models/sft"
    assert policy_dir("r2") == "data/rounds/r2/policy"


def _all_sections() -> list[type[BaseModel]]:
    return [v for v in vars(cfg).values() if isinstance(v, type) and issubclass(v, cfg._Section) and v is not cfg._Section]


def test_every_field_has_help_text():
    rows = field_help()
    keys = [k for k, _, _ in rows]
    assert {"seed", "dpo.beta", "model.arch.hidden_size", "rounds", "data.source"} <= set(keys)
    assert len(keys) == len(set(keys))
    missing = [k for k, _, h in rows if not h.strip()]
    assert missing == [], f"fields without help text: {missing}"
    # also the models field_help does not recurse into (e.g. RoundConfig under rounds.<name>)
    assert cfg.RoundConfig in _all_sections()
    missing = [f"{m.__name__}.{n}" for m in _all_sections() for n, f in m.model_fields.items()
               if not (f.description or "").strip()]
    assert missing == [], f"fields without help text: {missing}"


def test_field_help_defaults():
    rows = {k: d for k, d, _ in field_help()}
    assert rows["dpo.beta"] == "0.1"
    assert rows["data.path"] == "None"
    assert rows["model"] == ""  # a section


def test_configs_are_frozen(tmp_path: Path):
    p = load_params(write(tmp_path, "rounds:\n  r1:\n    prev: sft\n"))
    with pytest.raises(ValidationError):
        p.seed = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        p.dpo.beta = 0.5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        p.model.arch.num_layers = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        p.rounds["r1"].prev = "r0"  # type: ignore[misc]
    assert p.dpo.beta == 0.1


def test_unknown_keys_rejected_in_code_too():
    with pytest.raises(ValidationError):
        DPOConfig(betta=0.1)  # type: ignore[call-arg]


def test_non_embedded_source_needs_a_path(tmp_path):
    from alignloop.core.config import ConfigError, load_params

    f = tmp_path / "params.yaml"
    f.write_text("seed: 0\ndata:\n  source: jsonl\n")
    with pytest.raises(ConfigError) as exc:
        load_params(f)
    msg = str(exc.value)
    assert "params.yaml:2" in msg and "data.path is required when data.source is 'jsonl'" in msg


def test_registry_gate_metrics_are_checked(tmp_path):
    text = "registry:\n  gate:\n    beat_champion: [gold_rewrd]\n    max: {kl: 3}\n"
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, text))
    msg = str(err.value)
    assert "registry.gate.beat_champion.0" in msg and "registry.gate.max.kl" in msg and "params.yaml:3" in msg


def test_start_from_champion_needs_the_registry(tmp_path):
    text = "registry: {enabled: false}\nrounds:\n  r1: {prev: sft}\n  r2: {prev: r1, start: champion}\n"
    with pytest.raises(ConfigError, match=r"params.yaml:4: rounds.r2.start: 'champion' needs registry.enabled: true \(fix:"):
        load_params(write(tmp_path, text))


def test_new_round_sections_are_validated_with_lines(tmp_path):
    text = ("generate:\n  budget:\n    min_n: 4\n    max_n: 3\n"
            "rounds:\n  r1:\n    algo: ppo\n    prev: sft\n    ppo:\n      iterations: 0\n      klcoef: 1\n"
            "  r2:\n    algo: sarsa\n    prev: r1\n")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    msg = str(info.value)
    assert f"{path}:2: generate.budget: " in msg and "max_n (3) < min_n (4)" in msg
    assert f"{path}:10: rounds.r1.ppo.iterations: " in msg
    assert f"{path}:11: rounds.r1.ppo.klcoef: " in msg
    assert f"{path}:13: rounds.r2.algo: " in msg


def test_round_budget_override_merges_key_by_key(tmp_path):
    path = write(tmp_path, "generate:\n  budget:\n    strategy: adaptive\n    target_margin: 2.0\n"
                           "rounds:\n  r1:\n    prev: sft\n    generate:\n      budget:\n        min_n: 3\n")
    b = load_params(path).round_section("r1", "generate").budget
    assert (b.strategy, b.target_margin, b.min_n) == ("adaptive", 2.0, 3)


def test_bad_params_of_the_online_algorithms_and_rewards_are_listed_at_once(tmp_path):
    """Every problem of the new algorithms' and rewards' params in one error, each with its line and fix."""
    text = (
        "grpo: {num_generations: 1}\n"                                            # 1
        "rounds:\n"                                                               # 2
        "  r1:\n"                                                                 # 3
        "    algo: reinforce_pp\n"                                                # 4
        "    prev: sft\n"                                                         # 5
        "    ppo: {baseline: group_mean, samples_per_prompt: 1}\n"                # 6
        "  r2:\n"                                                                 # 7
        "    algo: ppo\n"                                                         # 8
        "    prev: r1\n"                                                          # 9
        "    ppo: {baseline: group_mean}\n"                                       # 10
        "  r3:\n"                                                                 # 11
        "    algo: grpo\n"                                                        # 12
        "    prev: r2\n"                                                          # 13
        "    grpo: {beta: -0.1, loss_type: ppo}\n"                                # 14
        "    reward: {aggregate: maxmin}\n"                                       # 15
        "  r4:\n"                                                                 # 16
        "    algo: rloo\n"                                                        # 17
        "    prev: r3\n"                                                          # 18
        "    reward: {sources: [{reward_model: ensemble, function: 'a:b'}]}\n"    # 19
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    found = problems(str(info.value))
    want = {1: "grpo.num_generations", 6: "rounds.r1.ppo.samples_per_prompt", 10: "rounds.r2.ppo.baseline",
            14: "rounds.r3.grpo.beta", 15: "rounds.r3.reward"}
    for line, key in want.items():
        assert any(p.startswith(f"{path}:{line}: {key}") for p in found), (key, found)
    assert any("rounds.r3.grpo.loss_type" in p for p in found), found
    assert any("rounds.r4.reward.sources.0" in p and "either reward_model or function" in p for p in found), found
    assert all("fix:" in p for p in found), found
    assert any("REINFORCE++-baseline" in p and "samples_per_prompt: 4" in p for p in found), found


def test_a_reward_source_names_an_existing_ensemble_member(tmp_path):
    path = write(tmp_path, "reward_model: {ensemble: 2}\nreward: {sources: [{reward_model: 2}]}\n")
    with pytest.raises(ConfigError, match=r"reward_model 2 is not a member of the 2-member ensemble \(fix: a member "
                                          r"index 0\.\.1"):
        load_params(path)
    params = load_params(write(tmp_path, "reward_model: {ensemble: 2}\nreward: {sources: [{reward_model: 1}, "
                                         "{function: 'alignloop.core.reward_functions:length_window', weight: 0.5}]}\n"))
    assert [s.label for s in params.reward.sources] == ["rm1", "length_window"]
    assert not params.reward.is_default and load_params(write(tmp_path, "seed: 1\n")).reward.is_default


def test_a_whole_params_check_alone_is_reported_not_dropped(tmp_path):
    """A check across sections (a model validator of Params) is listed even when it is the only problem (it was
    filtered out with the rounds summary once, leaving '0 problem(s)')."""
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, "curate: {judge_fraction: 0}\njudge_model: {enabled: true}\n"))
    assert "1 problem(s)" in str(info.value) and "judge_model.enabled needs a judge split (fix:" in str(info.value)


def test_bad_params_of_the_general_preference_rounds_are_listed_at_once_before_any_work(tmp_path):
    """eta <= 0, eta * tau > 1, fewer than two samples per prompt and DPO-family settings TRL would refuse only after
    loading the models: one error, each problem with its line and fix."""
    text = (
        "preference_model: {enabled: true}\n"                                     # 1
        "rounds:\n"                                                               # 2
        "  s1:\n"                                                                 # 3
        "    algo: sppo\n"                                                        # 4
        "    prev: sft\n"                                                         # 5
        "    sppo: {eta: 0}\n"                                                    # 6
        "  i2:\n"                                                                 # 7
        "    algo: inpo\n"                                                        # 8
        "    prev: s1\n"                                                          # 9
        "    inpo: {eta: 5, tau: 0.5}\n"                                          # 10
        "    generate: {n: 1}\n"                                                  # 11
        "  d3:\n"                                                                 # 12
        "    algo: dpo\n"                                                         # 13
        "    prev: i2\n"                                                          # 14
        "    dpo: {loss_type: [sigmoid, sft], loss_weights: [1.0], f_divergence_type: js_divergence}\n"  # 15
        "  d4:\n"                                                                 # 16
        "    algo: dpo\n"                                                         # 17
        "    prev: d3\n"                                                          # 18
        "    dpo: {loss_type: nca_pair, f_divergence_type: forward_kl}\n"         # 19
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    found = problems(str(info.value))
    want = {6: "rounds.s1.sppo.eta", 10: "rounds.i2.inpo.tau", 11: "rounds.i2.generate.n", 15: "rounds.d3.dpo",
            19: "rounds.d4.dpo"}
    for line, key in want.items():
        assert any(p.startswith(f"{path}:{line}: {key}") for p in found), (key, found)
    assert all("fix:" in p for p in found), found
    assert any("eta * tau = 2.5 > 1" in p and "tau <= 0.2" in p for p in found), found
    assert any("1 weight(s) for 2 loss type(s)" in p for p in found), found
    assert any("does not apply to loss type(s) ['nca_pair']" in p for p in found), found


def test_a_self_play_round_needs_the_preference_model(tmp_path):
    path = write(tmp_path, "rounds:\n  r1: {algo: dno, prev: sft}\n  r2: {algo: lipo, prev: r1}\n")
    with pytest.raises(ConfigError, match=r"round\(s\) r1 select and train by a preference model, and none is "
                                          r"trained \(fix: set preference_model.enabled: true\)"):
        load_params(path)
    ok = load_params(write(tmp_path, "preference_model: {enabled: true}\nrounds:\n  r1: {algo: dno, prev: sft}\n"
                                     "  r2: {algo: lipo, prev: r1}\n"))  # lipo ranks by the reward: no model needed
    assert ok.round_section("r1", "dno").min_margin == 0.1


def test_the_trl_dpo_family_is_reachable_through_params():
    d = DPOConfig(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])
    assert d.loss_types == ["sigmoid", "bco_pair", "sft"]
    assert DPOConfig().loss_types == ["sigmoid"] and DPOConfig().f_divergence_type == "reverse_kl"
    for loss in ("sppo_hard", "nca_pair", "apo_zero", "discopop"):
        assert DPOConfig(loss_type=loss).loss_types == [loss]
    for f in ("forward_kl", "js_divergence", "alpha_divergence"):
        assert DPOConfig(f_divergence_type=f).f_divergence_type == f
    with pytest.raises(ValidationError, match="exo_pair needs label_smoothing > 0"):
        DPOConfig(loss_type="exo_pair")
    assert set(cfg.F_DIVERGENCE_LOSS_TYPES) <= set(cfg.DPO_LOSS_TYPES)
