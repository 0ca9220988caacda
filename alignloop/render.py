"""Render dvc.yaml from params.yaml.

DVC pipelines are static DAGs; rounds are a list in params.yaml whose length and algorithms change. A plain
``foreach`` cannot give each round only the stages its algorithm needs, nor depend on exactly the params keys
a stage reads, so dvc.yaml is generated here and committed. ``alignloop render`` rewrites it,
``alignloop render --check`` (and every stage at start) fails when it is stale.

Each stage lists precisely the params keys it reads, so e.g. changing ``rounds.r2.dpo.beta`` reruns
``dpo_r2`` and what follows, and nothing before it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from alignloop.config import Params
from alignloop.lineage import reward_model_dirs

HEADER = "# GENERATED from params.yaml by `alignloop render` -- do not edit; edit params.yaml and re-render.\n"
PY = "python -m alignloop.stages."

COMMON = ["alignloop/config.py", "alignloop/io.py", "alignloop/stages/_cli.py"]
MODEL = COMMON + ["alignloop/modeling.py"]
TRAIN = MODEL + ["alignloop/stages/_train.py"]
INFER = MODEL + ["alignloop/inference.py"]
GPU_STAGES = {"sft", "reward_model", "evaluate", "generate", "score", "dpo", "ppo", "raft"}  # modules that run a model


def _round_keys(raw_rounds: dict, name: str, sections: list[str]) -> list[str]:
    """The params keys of round ``name`` a stage reads: the round's ``prev`` plus the override sections present."""
    keys = [f"rounds.{name}.prev"]
    for s in sections:
        if s in (raw_rounds.get(name) or {}):
            keys.append(f"rounds.{name}.{s}")
    return keys


def _has(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _existing(raw: dict, stages: dict) -> dict:
    """Keep only params keys present in params.yaml: DVC refuses a stage whose params key is missing.

    A section left out of params.yaml takes the code defaults, tracked through the alignloop/config.py dep;
    adding it later changes the rendered file, which the stale check then reports.
    """
    for stage in stages.values():
        if "params" in stage:
            stage["params"] = [k for k in stage["params"] if _has(raw, k)]
            if not stage["params"]:
                del stage["params"]
    return stages


def _eval_outs(name: str) -> tuple[str, str]:
    if name == "sft":
        return "data/eval/sft.json", "data/eval/sft_samples.jsonl"
    return f"data/rounds/{name}/eval.json", f"data/rounds/{name}/eval_samples.jsonl"


def _sampling_stages(params: Params, raw_rounds: dict, name: str, rnd, start_deps: list[str], start_keys: list[str],
                     rm_dirs: list[str]) -> dict:
    """generate_<r> and score_<r>: the rejection sampling that dpo and raft rounds start with."""
    d = f"data/rounds/{name}"
    budget = params.round_section(name, "generate").budget.strategy
    budget_deps, budget_keys = ["alignloop/budget.py", "alignloop/backends.py"], []
    if budget == "adaptive":  # scores its samples as it draws them: the reward model(s) are inputs
        budget_deps += ["alignloop/ensemble.py", *rm_dirs]
        budget_keys = ["score", "reward_model.ensemble"] + _round_keys(raw_rounds, name, ["score"])
    elif budget == "prev_variance" and rnd.prev != "sft" and params.rounds[rnd.prev].algo != "ppo":
        budget_deps.append(f"data/rounds/{rnd.prev}/scores.jsonl")
    return {
        f"generate_{name}": {
            "cmd": PY + f"generate --round {name}",
            "deps": INFER + ["alignloop/stages/generate.py", "alignloop/lineage.py", *budget_deps, *start_deps,
                             "data/curated/prompts/train.jsonl"],
            "params": ["seed", "model", "generate"] + _round_keys(raw_rounds, name, ["generate"]) + budget_keys
            + start_keys,
            "outs": [f"{d}/samples.jsonl"],
        },
        f"score_{name}": {
            "cmd": PY + f"score --round {name}",
            "deps": INFER + ["alignloop/ensemble.py", "alignloop/lineage.py", "alignloop/metrics.py",
                             "alignloop/stages/score.py", *rm_dirs, f"{d}/samples.jsonl"],
            "params": ["model", "score", "reward_model.ensemble"] + _round_keys(raw_rounds, name, ["score"]),
            "outs": [f"{d}/scores.jsonl"],
        },
    }


def render(params: Params, raw: dict) -> dict:
    """dvc.yaml as a dict for validated ``params`` (``raw`` is the YAML mapping, to see which keys exist)."""
    embedded_data = params.data.source == "embedded"
    stages: dict[str, dict] = {}
    if embedded_data:
        stages["prepare"] = {
            "cmd": PY + "prepare",
            "deps": COMMON + ["alignloop/task.py", "alignloop/stages/prepare.py"],
            "params": ["seed", "task"],
            "outs": ["data/raw"],
        }
    curate_deps = COMMON + ["alignloop/adapters.py", "alignloop/curate.py", "alignloop/stages/curate.py"]
    if embedded_data:
        curate_deps.append("data/raw")
    elif params.data.source == "jsonl" and params.data.path:
        curate_deps.append(params.data.path)
    stages["curate"] = {
        "cmd": PY + "curate",
        "deps": curate_deps,
        "params": ["seed", "data", "curate"],
        "outs": [
            "data/curated/prompts/train.jsonl", "data/curated/prompts/eval.jsonl", "data/curated/sft.jsonl",
            "data/curated/prefs/train.jsonl", "data/curated/prefs/eval.jsonl", "data/curated/quarantine.jsonl",
        ],
        "metrics": [{"data/curated/metrics.json": {"cache": False}}],
    }
    stages["base"] = {
        "cmd": PY + "base",
        "deps": MODEL + ["alignloop/stages/base.py", "data/curated/sft.jsonl", "data/curated/prefs/train.jsonl",
                         "data/curated/prefs/eval.jsonl"],
        "params": ["seed", "model"],
        "outs": ["data/models/base"],
    }
    stages["sft"] = {
        "cmd": PY + "sft",
        "deps": TRAIN + ["alignloop/stages/sft.py", "data/models/base", "data/curated/sft.jsonl"],
        "params": ["seed", "model", "train", "sft"],
        "outs": ["data/models/sft"],
        "metrics": [{"data/models/sft.metrics.json": {"cache": False}}],
    }
    rm_init = "data/models/sft" if params.reward_model.init == "sft" else "data/models/base"
    rm_deps = TRAIN + ["alignloop/inference.py", "alignloop/metrics.py", "alignloop/stages/reward_model.py", rm_init,
                       "data/curated/prefs/train.jsonl", "data/curated/prefs/eval.jsonl"]
    if embedded_data:
        rm_deps.append("alignloop/task.py")
    rm_dirs = reward_model_dirs(params)
    stages["reward_model"] = {
        "cmd": PY + "reward_model",
        "deps": rm_deps + (["alignloop/ensemble.py", "alignloop/lineage.py"] if len(rm_dirs) > 1 else []),
        "params": ["seed", "model", "train", "reward_model", "score.batch_size", "data.source"],
        "outs": rm_dirs,
        "metrics": [{"data/models/rm.metrics.json": {"cache": False}}],
    }
    eval_deps = INFER + ["alignloop/ensemble.py", "alignloop/lineage.py", "alignloop/metrics.py",
                         "alignloop/stages/evaluate.py", "data/curated/prompts/eval.jsonl", "data/curated/prefs/eval.jsonl",
                         *rm_dirs, "data/models/rm.metrics.json"] + (["alignloop/task.py"] if embedded_data else [])
    eval_params = ["model", "evaluate", "score", "reward_model.ensemble", "data.source"]
    sft_json, sft_samples = _eval_outs("sft")
    stages["evaluate_sft"] = {
        "cmd": PY + "evaluate --round sft",
        "deps": eval_deps + ["data/models/sft"],
        "params": eval_params,
        "outs": [sft_samples],
        "metrics": [{sft_json: {"cache": False}}],
    }
    raw_rounds = raw.get("rounds") or {}
    for name, rnd in params.rounds.items():
        d = f"data/rounds/{name}"
        prev_policy = params.policy_dir(rnd.prev)
        # Every policy prev's registration can leave as champion: sft and the rounds up to prev (a static set).
        earlier = ["sft", *list(params.rounds)[: list(params.rounds).index(rnd.prev) + 1]] if rnd.prev != "sft" else ["sft"]
        if rnd.start == "champion" and rnd.prev != "sft":
            # Starts from whichever policy prev's registration left as champion: that record, and every policy
            # it can name, are the inputs (the set is static, so DVC can track it).
            start_deps = [f"data/rounds/{rnd.prev}/registry.json", *(params.policy_dir(n) for n in earlier)]
        else:
            start_deps = [prev_policy]
        start_keys = [f"rounds.{name}.start"] if "start" in (raw_rounds.get(name) or {}) else []
        algo_key = [f"rounds.{name}.algo"]
        offline = rnd.algo == "dpo" and params.round_section(name, "dpo").pairs == "curated"
        if rnd.algo in ("dpo", "raft") and not offline:  # rejection sampling first
            stages.update(_sampling_stages(params, raw_rounds, name, rnd, start_deps, start_keys, rm_dirs))
        if rnd.algo == "dpo":
            if not offline:
                stages[f"pairs_{name}"] = {
                    "cmd": PY + f"pairs --round {name}",
                    "deps": COMMON + ["alignloop/pairs.py", "alignloop/selection.py", "alignloop/stages/pairs.py",
                                      f"{d}/samples.jsonl", f"{d}/scores.jsonl"],
                    "params": ["pairs"] + _round_keys(raw_rounds, name, ["pairs"]),
                    "outs": [f"{d}/pairs.jsonl"]
                    + ([f"{d}/rankings.jsonl"] if params.round_section(name, "pairs").listwise else []),
                    "metrics": [{f"{d}/pairs_metrics.json": {"cache": False}}],
                }
            dpo_cfg = params.round_section(name, "dpo")
            ref_deps = [params.policy_dir("sft")] if dpo_cfg.ref == "sft" else []
            stages[f"dpo_{name}"] = {
                "cmd": PY + f"dpo --round {name}",
                "deps": TRAIN + ["alignloop/stages/dpo.py", "alignloop/stages/reward_model.py", "alignloop/lineage.py",
                                 *start_deps, *[r for r in ref_deps if r not in start_deps],
                                 "data/curated/prefs/train.jsonl" if offline else f"{d}/pairs.jsonl"],
                "params": ["seed", "model", "train", "dpo"] + algo_key + _round_keys(raw_rounds, name, ["dpo"]) + start_keys,
                "outs": [f"{d}/policy"],
                "metrics": [{f"{d}/train_metrics.json": {"cache": False}}],
            }
        elif rnd.algo == "raft":
            stages[f"raft_{name}"] = {
                "cmd": PY + f"raft --round {name}",
                "deps": TRAIN + ["alignloop/pairs.py", "alignloop/selection.py", "alignloop/stages/raft.py",
                                 "alignloop/lineage.py", *start_deps, f"{d}/samples.jsonl", f"{d}/scores.jsonl"],
                "params": ["seed", "model", "train", "raft"] + algo_key + _round_keys(raw_rounds, name, ["raft"]) + start_keys,
                "outs": [f"{d}/raft.jsonl", f"{d}/policy"],
                "metrics": [{f"{d}/train_metrics.json": {"cache": False}}],
            }
        else:  # ppo: on-policy rollouts inside the stage, no sampling stages
            ppo_cfg = params.round_section(name, "ppo")
            ref_deps = [params.policy_dir("sft")] if ppo_cfg.ref == "sft" else []
            stages[f"ppo_{name}"] = {
                "cmd": PY + f"ppo --round {name}",
                "deps": INFER + ["alignloop/ensemble.py", "alignloop/lineage.py", "alignloop/ppo.py", "alignloop/rl.py",
                                 "alignloop/stages/ppo.py", *start_deps, *[r for r in ref_deps if r not in start_deps],
                                 *rm_dirs, "data/curated/prompts/train.jsonl"],
                "params": ["seed", "model", "ppo", "score", "reward_model.ensemble"] + algo_key
                + _round_keys(raw_rounds, name, ["ppo", "score"]) + start_keys,
                "outs": [f"{d}/policy"],
                "metrics": [{f"{d}/train_metrics.json": {"cache": False}}],
            }
        r_json, r_samples = _eval_outs(name)
        # The current champion's samples: prev's (or, with the registry, any earlier policy prev's registration
        # left as champion — the set is static, so DVC can track it).
        if rnd.prev != "sft" and params.registry.enabled:
            champ_deps = [f"data/rounds/{rnd.prev}/registry.json", *(_eval_outs(n)[1] for n in earlier)]
        else:
            champ_deps = [_eval_outs(rnd.prev)[1]]
        stages[f"evaluate_{name}"] = {
            "cmd": PY + f"evaluate --round {name}",
            "deps": list(dict.fromkeys(eval_deps + [f"{d}/policy", "data/models/sft", sft_json, sft_samples, *champ_deps])),
            "params": eval_params + [f"rounds.{name}.prev", "registry.enabled"],
            "outs": [r_samples],
            "metrics": [{r_json: {"cache": False}}],
        }
        if params.registry.enabled:
            stages[f"register_{name}"] = {
                "cmd": PY + f"register --round {name}",
                "deps": COMMON + ["alignloop/gate.py", "alignloop/lineage.py", "alignloop/registry.py", "alignloop/tracking.py",
                                  "alignloop/stages/register.py", r_json, f"{d}/policy",
                                  sft_json if rnd.prev == "sft" else f"data/rounds/{rnd.prev}/registry.json"],
                "params": ["experiment", "registry", f"rounds.{name}.prev", f"rounds.{name}.algo"] + start_keys,
                "outs": [{f"{d}/registry.json": {"cache": False}}],
            }
    stages["report"] = {
        "cmd": PY + "report",
        "deps": COMMON + ["alignloop/stages/report.py", sft_json] + [_eval_outs(n)[0] for n in params.rounds],
        "plots": [{"data/report/rounds.json": {"cache": False}}, {"data/report/rounds.png": {"cache": False}}],
        "metrics": [{"data/report/summary.json": {"cache": False}}],
    }
    plots = [
        {"reward": {"x": "step", "y": {"data/report/rounds.json": ["proxy_reward", "gold_reward"]} if embedded_data
                    else {"data/report/rounds.json": ["proxy_reward"]}, "title": "Reward by round", "x_label": "round"}},
        {"win_rate": {"x": "step", "y": {"data/report/rounds.json": ["win_rate_vs_sft_proxy", "win_rate_vs_champion_proxy"]
                                          + (["win_rate_vs_sft_gold", "win_rate_vs_champion_gold"] if embedded_data
                                             else [])},
                      "title": "Win-rate vs SFT", "x_label": "round"}},
        {"kl": {"x": "step", "y": {"data/report/rounds.json": ["kl_to_sft"]}, "title": "KL to SFT", "x_label": "round"}},
        *([{"overoptimisation": {"x": "step", "y": {"data/report/rounds.json": ["proxy_gold_gap"]},
                                 "title": "Proxy gain minus gold gain over SFT", "x_label": "round"}}]
          if embedded_data else []),
        {"length": {"x": "step", "y": {"data/report/rounds.json": ["length_tokens"]}, "title": "Response length",
                    "x_label": "round"}},
        {"diversity": {"x": "step", "y": {"data/report/rounds.json": ["distinct_2", "self_bleu"]},
                       "title": "Diversity (distinct-2 up, self-BLEU down = more diverse)", "x_label": "round"}},
        {"ranking": {"x": "step", "y": {"data/report/rounds.json": ["ranking_accuracy", "ranking_accuracy_vs_sft"]},
                     "title": "Ranking accuracy on held-out preference pairs", "x_label": "round"}},
        "data/report/rounds.png",
    ]
    for name, stage in stages.items():
        # DVC ignores `meta`; the Prefect flows read it to give these stages a GPU slot.
        if stage["cmd"].split()[2].rsplit(".", 1)[-1] in GPU_STAGES:
            stage["meta"] = {"gpu": True}
    return {"stages": _existing(raw, stages), "plots": plots}


class _NoAliases(yaml.SafeDumper):
    """Write shared lists out in full: dvc.yaml is read by people, not only by DVC."""

    def ignore_aliases(self, data) -> bool:
        return True


def render_text(params: Params, raw: dict) -> str:
    return HEADER + yaml.dump(render(params, raw), Dumper=_NoAliases, sort_keys=False, width=120)


def render_file(params_path: str | Path = "params.yaml") -> str:
    from alignloop.config import load_params

    params = load_params(params_path)
    raw = yaml.safe_load(Path(params_path).read_text(encoding="utf-8")) or {}
    return render_text(params, raw)


def stale_message(params_path: str | Path = "params.yaml", dvc_path: str | Path = "dvc.yaml") -> str | None:
    """None when dvc.yaml matches params.yaml, else a message that says how to fix it."""
    dvc_path = Path(dvc_path)
    if not dvc_path.exists():
        return f"{dvc_path}: missing (fix: run `alignloop render`)"
    if dvc_path.read_text(encoding="utf-8") != render_file(params_path):
        return (f"{dvc_path} does not match {params_path} (rounds or sources changed since it was rendered) "
                "(fix: run `alignloop render`, then `dvc repro`)")
    return None
