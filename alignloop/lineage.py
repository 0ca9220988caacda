"""Which policy a round starts from. Read by generate and dpo; a dependency of their DVC stages, so it stays small."""

from __future__ import annotations


def registry_path(round_name: str) -> str:
    return f"data/rounds/{round_name}/registry.json"


def start_policy(params, round_name: str) -> str:
    """The policy directory a round starts from: its prev's, or (``start: champion``) the champion recorded by
    prev's registration — a pipeline output, so `dvc repro` follows the same chain every time."""
    from alignloop.io import read_json

    rnd = params.rounds[round_name]
    if rnd.start == "prev" or rnd.prev == "sft":
        return params.policy_dir(rnd.prev)
    return read_json(registry_path(rnd.prev))["champion_after"]["path"]


def reward_model_dirs(params) -> list[str]:
    """The reward model's directories: member 0 at data/models/rm, further ensemble members at rm-1, rm-2, ..."""
    return ["data/models/rm"] + [f"data/models/rm-{i}" for i in range(1, params.reward_model.ensemble)]


def champion_before(params, name: str) -> str:
    """The policy a round is compared with as "the current champion": the champion after its prev's registration
    (registry on), else its prev. SFT's champion is SFT."""
    from alignloop.io import read_json

    if name == "sft":
        return "sft"
    prev = params.rounds[name].prev
    if prev == "sft" or not params.registry.enabled:
        return prev
    return read_json(registry_path(prev))["champion_after"]["round"]
