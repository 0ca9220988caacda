"""Which policy a round starts from and is compared with. Read by the sampling, training and evaluation stages and
by their specs (the inputs DVC tracks)."""

from __future__ import annotations

from alignloop.pipeline import layout


def reward_model_dirs(params) -> list[str]:
    return layout.reward_model_dirs(params.reward_model.ensemble)


def start_policy(params, round_name: str) -> str:
    """The policy directory a round starts from: its prev's, or (``start: champion``) the champion recorded by
    prev's registration — a pipeline output, so `dvc repro` follows the same chain every time."""
    from alignloop.core.files import read_json

    rnd = params.rounds[round_name]
    if rnd.start == "prev" or rnd.prev == "sft":
        return layout.policy_dir(rnd.prev)
    return read_json(layout.registry_record(rnd.prev))["champion_after"]["path"]


def champion_before(params, name: str) -> str:
    """The policy a round is compared with as "the current champion": the champion after its prev's registration
    (registry on), else its prev. SFT's champion is SFT."""
    from alignloop.core.files import read_json

    if name == "sft":
        return "sft"
    prev = params.rounds[name].prev
    if prev == "sft" or not params.registry.enabled:
        return prev
    return read_json(layout.registry_record(prev))["champion_after"]["round"]


def policies_up_to_prev(params, name: str) -> list[str]:
    """Every policy prev's registration can leave as champion: sft and the rounds up to prev (a static set)."""
    prev = params.rounds[name].prev
    if prev == "sft":
        return ["sft"]
    order = list(params.rounds)
    return ["sft", *order[: order.index(prev) + 1]]


def start_deps(params, name: str) -> list[str]:
    """The inputs that decide a round's start policy: prev's policy, or with ``start: champion`` prev's registry
    record and every policy it can name."""
    rnd = params.rounds[name]
    if rnd.start == "champion" and rnd.prev != "sft":
        return [layout.registry_record(rnd.prev), *(layout.policy_dir(n) for n in policies_up_to_prev(params, name))]
    return [layout.policy_dir(rnd.prev)]


def reference_deps(params, name: str, ref: str) -> list[str]:
    """The reference policy's directory when it is SFT and not already a start input (``ref: prev`` is the start)."""
    sft = layout.policy_dir("sft")
    return [sft] if ref == "sft" and sft not in start_deps(params, name) else []


def champion_sample_deps(params, name: str) -> list[str]:
    """The current champion's evaluation samples: prev's, or with the registry any earlier policy prev's
    registration can leave as champion, plus that record."""
    prev = params.rounds[name].prev
    if prev != "sft" and params.registry.enabled:
        return [layout.registry_record(prev), *(layout.eval_paths(n)[1] for n in policies_up_to_prev(params, name))]
    return [layout.eval_paths(prev)[1]]


def reward_deps(params, name: str) -> list[str]:
    """The reward-model directories a round's reward reads: every member for the ensemble source, one for a member
    source, none when its sources are functions only. (Functions read the prompts' ``meta``: the stages that call
    them depend on the prompts file themselves.)"""
    dirs = reward_model_dirs(params)
    return [dirs[k] for k in params.round_section(name, "reward").members(len(dirs))]


def reward_modules(params, name: str) -> list[str]:
    """The modules of a round's reward functions: code the reward depends on, so DVC reruns a stage when one changes."""
    return params.round_section(name, "reward").function_modules


def round_reward(params, name: str, *, keep_loaded: bool = False):
    """The round's reward (alignloop.ml.rewards.RoundReward) over its reward-model directories."""
    from alignloop.ml.rewards import RoundReward

    return RoundReward(params.round_section(name, "reward"), params.round_section(name, "score"), params.model,
                       reward_model_dirs(params), keep_loaded=keep_loaded)
