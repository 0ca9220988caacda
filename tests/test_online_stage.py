"""The GRPO/RLOO stage's glue, without training: how TRL's reward call reaches the round's reward."""

from __future__ import annotations

from alignloop.pipeline.stages.grpo import SPECS, StepTimer, reward_for_trl


def test_trl_reward_calls_reach_the_round_reward_with_the_datas_prompts_and_meta():
    """TRL passes rendered chat prompts, conversational completions and the dataset's other columns (prompt_id)
    as lists; the round's reward gets the prompt as the data has it, the completion's text and the prompt's meta."""
    rows = {"p1": {"id": "p1", "prompt": "tell me about tea", "meta": {"topic": "tea"}},
            "p2": {"id": "p2", "prompt": [{"role": "user", "content": "hi"}]}}
    seen = {}

    def reward(prompts, completions, meta):
        seen.update(prompts=prompts, completions=completions, meta=meta)
        return [float(len(c)) for c in completions]

    fn = reward_for_trl(reward, rows)
    out = fn(prompts=[[{"role": "user", "content": "rendered"}]] * 3,
             completions=[[{"role": "assistant", "content": " warm cup "}], "plain", [{"role": "assistant", "content": ""}]],
             prompt_id=["p1", "p2", "p1"], completion_ids=[[1], [2], [3]], trainer_state=None)
    assert out == [8.0, 5.0, 0.0]
    assert seen == {"prompts": ["tell me about tea", [{"role": "user", "content": "hi"}], "tell me about tea"],
                    "completions": ["warm cup", "plain", ""], "meta": [{"topic": "tea"}, {}, {"topic": "tea"}]}


def test_step_timer_adds_each_calls_wall_time_and_passes_results_and_errors_through():
    timer = StepTimer()
    assert timer.wrap(lambda x: x + 1, "generate")(1) == 2
    boom = timer.wrap(lambda: 1 / 0, "reward")
    try:
        boom()
    except ZeroDivisionError:
        pass
    assert timer.seconds["generate"] > 0 and timer.seconds["reward"] > 0


def test_grpo_and_rloo_are_two_stages_of_one_module_picked_by_a_flag():
    grpo, rloo = SPECS
    assert (grpo.name, grpo.args, rloo.name, rloo.args) == ("grpo", "", "rloo", "--rloo")
    assert grpo.module == rloo.module and grpo.gpu and rloo.gpu


def test_a_reference_other_than_the_start_policy_under_lora_is_refused_before_any_work(tmp_path, monkeypatch, capsys,
                                                                                          tracking):
    """TRL's reference under LoRA is the adapter-disabled start policy: `ref: sft` for a round that starts elsewhere
    cannot be honoured, so the stage says so with the fix (nothing is read or loaded; no inputs exist here)."""
    import yaml

    from alignloop.pipeline.stages import grpo

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "train": {"lora": {"enabled": True}},
        "rounds": {"r1": {"algo": "dpo", "prev": "sft"}, "g2": {"algo": "grpo", "prev": "r1"}}}, sort_keys=False))
    assert grpo.main(["--round", "g2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: grpo.ref sft with train.lora.enabled") and "fix: rounds.g2.grpo.ref: prev" in err, err
    assert "Traceback" not in err
