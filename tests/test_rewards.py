"""Programmable rewards, the pure part (alignloop.core.rewards, alignloop.core.reward_functions): loading reward
functions from the project only, calling them with every failure a clear error, and combining sources; numbers
computed by hand."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from alignloop.core.files import DataError
from alignloop.core.reward_functions import length_window, repetition_penalty
from alignloop.core.rewards import (RewardFunctionError, call_reward_function, combine, completion_text,
                                    load_reward_function, zscore)
from alignloop.core.synthetic import gold_reward

REPO = Path(__file__).resolve().parents[1]
S32 = math.sqrt(1.5)  # 1.2247...: the z-score of 1 and 3 in [1, 2, 3]


# --- combine -----------------------------------------------------------------------------------------------------


def test_zscore_uses_the_population_std_and_a_constant_column_is_zero():
    # [2, 4]: mean 3, population std 1
    assert zscore([2.0, 4.0]) == [-1.0, 1.0]
    # [1, 2, 3]: mean 2, variance (1 + 0 + 1) / 3 = 2/3, std 0.8165; z = -1/0.8165, 0, 1/0.8165 = -/+ sqrt(1.5)
    assert zscore([1.0, 2.0, 3.0]) == pytest.approx([-S32, 0.0, S32], abs=1e-12)
    assert zscore([0.3, 0.3, 0.3]) == [0.0, 0.0, 0.0]  # constant: zeros, not 0/0 (nor 1e-17-sized noise blown up)
    assert zscore([7.0]) == [0.0]
    assert zscore([]) == []


def test_weighted_sum_worked_example():
    rm = [1.0, 2.0, -1.0]
    rule = [0.0, -0.5, 4.0]
    # 1 + 0.5*0 = 1;  2 + 0.5*(-0.5) = 1.75;  -1 + 0.5*4 = 1
    assert combine([rm, rule], [1.0, 0.5], "weighted_sum") == [1.0, 1.75, 1.0]
    # weights scale every source: 2*1 - 1*0 = 2;  2*2 - 1*(-0.5) = 4.5;  2*(-1) - 1*4 = -6
    assert combine([rm, rule], [2.0, -1.0], "weighted_sum") == [2.0, 4.5, -6.0]


def test_one_source_at_weight_one_is_its_own_values_bit_for_bit():
    xs = [0.1, -0.0, 3e-17, -1.2345678901234567, 1e300, 0.30000000000000004]
    out = combine([xs], [1.0], "weighted_sum")
    assert json.dumps(out) == json.dumps(xs)  # -0.0 stays -0.0, every last bit kept
    assert math.copysign(1.0, out[1]) == -1.0


def test_maxmin_worked_example():
    a = [1.0, 2.0, 3.0]     # z: -sqrt(1.5), 0, sqrt(1.5)
    b = [30.0, 10.0, 20.0]  # mean 20, std sqrt(200/3) = 8.165; z: sqrt(1.5), -sqrt(1.5), 0
    # weights 1 and 2: a -> [-1.2247, 0, 1.2247], b -> [2.4495, -2.4495, 0]; the minimum per row:
    assert combine([a, b], [1.0, 2.0], "maxmin") == pytest.approx([-S32, -2 * S32, 0.0], abs=1e-12)
    # A constant source normalises to 0: it caps the reward at 0 from above, and the other source decides below.
    assert combine([a, [5.0, 5.0, 5.0]], [1.0, 1.0], "maxmin") == pytest.approx([-S32, 0.0, 0.0], abs=1e-12)
    # The minimum depends only on the z-scores: shifting and scaling a source changes nothing.
    assert combine([a, [x * 10 + 3 for x in b]], [1.0, 2.0], "maxmin") == pytest.approx([-S32, -2 * S32, 0.0], abs=1e-12)


def test_combine_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="2 source columns but 1 weights"):
        combine([[1.0], [2.0]], [1.0])
    with pytest.raises(ValueError, match="different lengths"):
        combine([[1.0], [2.0, 3.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="unknown reward aggregate 'mean'"):
        combine([[1.0]], [1.0], "mean")


# --- loading -----------------------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory on sys.path with a module of reward functions (and a package); removed from
    sys.modules afterwards, so each test imports its own."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "rw_mod.py").write_text(
        "LIMIT = 3\n\n"
        "def short(prompts, completions, meta=None, **kwargs):\n"
        "    return [1.0 if len(c) < LIMIT else 0.0 for c in completions]\n\n"
        "def _private():\n    pass\n")
    (root / "rw_broken.py").write_text("raise RuntimeError('boom at import')\n")
    (root / "rw_pkg").mkdir()
    (root / "rw_pkg" / "__init__.py").write_text("def fn(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "rw_outside.py").write_text("def fn(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.syspath_prepend(str(elsewhere))
    yield root
    for name in ("rw_mod", "rw_broken", "rw_pkg", "rw_outside"):
        sys.modules.pop(name, None)


def test_a_project_function_loads(project):
    fn = load_reward_function("rw_mod:short", project)
    assert fn([], ["ab", "abcd"]) == [1.0, 0.0]
    assert load_reward_function("alignloop.core.reward_functions:length_window", REPO) is length_window


@pytest.mark.parametrize("spec, expected", [
    ("no_module_here:fn", ["no module 'no_module_here'", "fix: correct the module name"]),
    ("rw_missing.deeper:fn", ["no module 'rw_missing.deeper'"]),
    ("rw_mod:nope", ["no attribute 'nope'", "fix: one of the functions it defines: ['short']"]),
    ("rw_mod:LIMIT", ["'LIMIT' in module 'rw_mod' is a int, not a function", "fix: name a function"]),
    ("os:getcwd", ["module 'os' is ", "outside the project", "fix: define the function in a module file under the "
                   "project, e.g. my_rewards.py, and name it my_rewards:getcwd"]),
    ("sys:exit", ["part of Python (built-in)", "outside the project"]),
    ("rw_outside:fn", ["outside the project"]),
    ("json.decoder:scanstring", ["module 'json.decoder' is at ", "outside the project"]),
    ("rw_pkg:fn", ["rw_pkg/__init__.py, not the module file rw_pkg.py", "fix:"]),
    ("rw_broken:fn", ["importing rw_broken.py raised RuntimeError: boom at import", "fix: correct the module"]),
    ("no colon", ["is not 'module:function'", "fix: e.g. alignloop.core.reward_functions:length_window"]),
])
def test_bad_function_names_are_clear_errors(project, spec, expected):
    with pytest.raises(RewardFunctionError) as info:
        load_reward_function(spec, project)
    msg = str(info.value)
    assert repr(spec) in msg, msg  # names the spec
    for part in expected:
        assert part in msg, msg
    assert isinstance(info.value, DataError)  # stages turn it into `error: ...`, exit 2


@pytest.mark.parametrize("spec, expected", [
    ("rw_mod:short", None), ("rw_mod:LIMIT", None),
    ("rw_mod:nope", "rw_mod.py defines no 'nope' (fix: one of its functions: ['short']"),
    ("os:getcwd", "no file os.py in the project"),
    ("rw_pkg.x:fn", "no file rw_pkg/x.py in the project"),
    ("no colon", "is not 'module:function'"),
])
def test_render_checks_a_function_against_the_project_files_without_importing(project, spec, expected):
    from alignloop.core.rewards import check_reward_function_source

    (project / "rw_bad_syntax.py").write_text("def f(:\n")
    if expected is None:
        check_reward_function_source(spec, project)
    else:
        with pytest.raises(RewardFunctionError, match=expected.replace("(", r"\(").replace("[", r"\[")):
            check_reward_function_source(spec, project)
    with pytest.raises(RewardFunctionError, match="rw_bad_syntax.py does not parse"):
        check_reward_function_source("rw_bad_syntax:f", project)
    assert "rw_broken" not in sys.modules  # nothing was imported


def test_alignloop_render_lists_every_bad_reward_function_at_once(tmp_path):
    import subprocess

    (tmp_path / "my_rewards.py").write_text("def brief(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    (tmp_path / "params.yaml").write_text(
        "rounds:\n  r1:\n    algo: grpo\n    prev: sft\n    reward:\n      sources:\n"
        "        - {function: 'my_rewards:brief'}\n        - {function: 'my_rewards:long'}\n"
        "        - {function: 'os:system'}\n")
    out = subprocess.run([sys.executable, "-m", "alignloop", "render"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "2 reward function(s) cannot be used" in out.stderr
    assert "'my_rewards:long': my_rewards.py defines no 'long' (fix: one of its functions: ['brief']" in out.stderr
    assert "'os:system': no file os.py in the project" in out.stderr
    assert not (tmp_path / "dvc.yaml").exists()  # nothing written


def test_a_module_outside_the_project_is_never_imported(project):
    with pytest.raises(RewardFunctionError, match="outside the project"):
        load_reward_function("rw_outside:fn", project)
    assert "rw_outside" not in sys.modules  # its location was checked before anything ran


# --- calling -----------------------------------------------------------------------------------------------------


def _ok(prompts, completions, meta=None, **kwargs):
    return [float(len(c)) for c in completions]


def test_call_passes_meta_and_returns_floats():
    seen = {}

    def fn(prompts, completions, meta=None):
        seen["meta"] = meta
        return [1, 2.5]  # ints are numbers too

    out = call_reward_function(fn, "m:fn", ["p1", "p2"], ["a", "b"], [{"topic": "ocean"}, {}])
    assert out == [1.0, 2.5] and all(type(x) is float for x in out)
    assert seen["meta"] == [{"topic": "ocean"}, {}]
    assert call_reward_function(_ok, "m:ok", ["p"], ["abc"], None) == [3.0]  # no meta: empty dicts


def test_an_exception_inside_the_function_names_it():
    def fn(prompts, completions, meta=None):
        return [1 / 0 for _ in completions]

    with pytest.raises(RewardFunctionError, match=r"reward function m:fn raised ZeroDivisionError: division by zero "
                                                  r"\(fix: correct the function"):
        call_reward_function(fn, "m:fn", ["p"], ["a"], [{}])


@pytest.mark.parametrize("result, expected", [
    ([1.0], "returned 1 values for 2 completions (expected 2, got 1"),
    ([1.0, 2.0, 3.0], "returned 3 values for 2 completions (expected 2, got 3"),
    (1.0, "returned a float, expected a list of 2 floats"),
    ({"a": 1.0, "b": 2.0}, "returned a dict, expected a list of 2 floats"),
    (None, "returned a NoneType"),
])
def test_a_wrong_shape_names_the_function_and_the_lengths(result, expected):
    with pytest.raises(RewardFunctionError) as info:
        call_reward_function(lambda p, c, meta=None: result, "m:fn", ["p1", "p2"], ["a", "b"], [{}, {}])
    assert "reward function m:fn" in str(info.value) and expected in str(info.value), str(info.value)


@pytest.mark.parametrize("bad, what", [(None, "None (not a number)"), ("0.5", "'0.5' (not a number)"),
                                       (True, "True (not a number)"), (math.nan, "nan (not finite)"),
                                       (math.inf, "inf (not finite)"), (10 ** 400, "(not finite)")])
def test_a_bad_value_names_the_function_and_the_row(bad, what):
    prompts = ["tell me about ocean", "tell me about forest " + "and more " * 30]
    completions = ["waves are calm", [{"role": "assistant", "content": "moss " * 40}]]
    with pytest.raises(RewardFunctionError) as info:
        call_reward_function(lambda p, c, meta=None: [0.0, bad], "m:fn", prompts, completions, [{}, {}])
    msg = str(info.value)
    assert msg.startswith("reward function m:fn returned ") and what in msg and "for row 1 " in msg, msg
    assert "prompt 'tell me about forest and more" in msg and "...'" in msg  # the row, shortened
    assert "response 'moss moss" in msg and "moss " * 20 not in msg
    assert "fix: return a finite float" in msg


def test_numpy_like_results_are_accepted():
    class Arr:
        def tolist(self):
            return [0.5, -1.0]

    assert call_reward_function(lambda p, c, meta=None: Arr(), "m:fn", ["a", "b"], ["x", "y"], None) == [0.5, -1.0]


# --- the shipped reward functions -----------------------------------------------------------------------------------


def test_completion_text_takes_strings_and_conversations():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "a b c"}]) == "a b c"


@pytest.mark.parametrize("response, length, repetition", [
    ("alpha beta gamma", -0.75, 0.0),                           # 3 words: 3 short of 6, -0.25 each; none repeated
    ("x x x x x x x x", 0.0, -1.75),                            # 8 words, 1 distinct: -2 * (1 - 1/8)
    (" ".join(f"w{i}" for i in range(15)), -0.75, 0.0),         # 15 words: 3 over 12
    ("one two three four five six", 0.0, 0.0),                   # 6: inside the window
    ("a1 a2 a3 a4 a1 a2 a3 a4 a1 a2 a3 a4 a1 a2", -0.5, -2 * (1 - 4 / 14)),  # 14 words, 4 distinct
])
def test_shipped_functions_are_the_gold_rewards_terms(response, length, repetition):
    # No topic, positive or negative words: the gold reward is exactly these two terms.
    prompt = "tell me about ocean"
    assert length_window([prompt], [response]) == [length]
    assert repetition_penalty([prompt], [response]) == pytest.approx([repetition], abs=1e-15)
    assert gold_reward(prompt, response) == repetition_penalty([prompt], [response])[0] + length_window([prompt], [response])[0]
    conversational = [[{"role": "assistant", "content": response}]]
    assert length_window([prompt], conversational, meta=[{}]) == [length]
    assert repetition_penalty([prompt], conversational, meta=[{}]) == repetition_penalty([prompt], [response])


def test_shipped_functions_on_topic_and_empty_responses():
    prompt = "tell me about ocean"
    on_topic = "waves tide salt shore blue deep"  # 6 distinct topic words: gold = 2 * on-topic share = 2
    assert gold_reward(prompt, on_topic) == 2.0 + repetition_penalty([prompt], [on_topic])[0] + \
        length_window([prompt], [on_topic])[0]
    # An empty response: the gold reward's floor for it; the length rule counts 6 missing words.
    assert repetition_penalty([prompt], [""]) == [gold_reward(prompt, "")] == [-4.0]
    assert length_window([prompt], [""]) == [-1.5]
    # Inside the window and nothing repeated: 0.0, not -0.0 (scores.jsonl shows 0.0).
    assert math.copysign(1.0, length_window([prompt], [on_topic])[0]) == 1.0
    assert math.copysign(1.0, repetition_penalty([prompt], [on_topic])[0]) == 1.0
