"""Stages `ppo` and `reinforce_pp`: one PPO or REINFORCE++ round (alignloop/ml/ppo.py) from the round's start policy
against the reward model(s). One module, two specs, one ``run``: the round's ``algo`` picks the advantage (PPO's GAE
with a value model, or REINFORCE++'s critic-free returns, settings in the ``ppo`` section for both); the rendered
``reinforce_pp`` command carries ``--reinforce-pp`` only so that the execution's MLflow run, opened before params
are read, gets that stage's name.

Inputs: the start policy, the KL reference (SFT or the start policy), the reward model(s) and the training prompts.
PPO's value model starts from the reward model (head included) or the policy. A checkpoint every
``ppo.checkpoint_every`` iterations lives in ``.alignloop/ckpt/<round>/<fingerprint>/``; a rerun after a kill
resumes from it when every input and setting is unchanged (the fingerprint), and it is deleted once the policy is
saved. Outputs: ``data/rounds/<r>/policy`` and ``train_metrics.json`` (per-iteration history in MLflow).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from alignloop.core import files
from alignloop.core.config import ConfigError
from alignloop.core.seeds import round_seed
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import reference_deps, reward_deps, reward_model_dirs, reward_modules, start_deps
from alignloop.pipeline.specs import Ctx, StageSpec, code_paths

PROMPTS = layout.PROMPTS_TRAIN
CKPT_ROOT = Path(layout.CKPT_ROOT)
_CODE = ("alignloop.ml.ppo", "alignloop.ml.rl", "alignloop.ml.inference", "alignloop.ml.modeling", "alignloop.ml.rewards",
         "alignloop.core.rewards", "alignloop.core.ensemble", "alignloop.core.seeds", "alignloop.pipeline.lineage")


def _value_init_dir(params, r: str, start: str) -> str:
    """Where PPO's value model starts: the (first) reward model, or the start policy."""
    return reward_model_dirs(params)[0] if params.round_section(r, "ppo").value_init == "reward_model" else start


def _deps(c) -> list[str]:
    # The round's reward (reward models and/or functions' prompts meta) and, for PPO, the value model's start when
    # it is the reward model (the start policy is a dep anyway).
    value = reward_model_dirs(c.params)[:1] if c.rnd.algo == "ppo" and c.section("ppo").value_init == "reward_model" \
        else []
    return list(dict.fromkeys([*start_deps(c.params, c.round), *reference_deps(c.params, c.round, c.section("ppo").ref),
                               *reward_deps(c.params, c.round), *value, PROMPTS]))


SPECS = [StageSpec(
    name="ppo", module="alignloop.pipeline.stages.ppo", scope="round", order=3,
    help="PPO with a value model against the reward model(s), KL-penalised, checkpointed (alignloop.ml.ppo)",
    code=_CODE, params=("seed", "model", "reward_model.ensemble"),
    round_params=("prev", "algo", "start", "ppo", "score", "reward"), deps=_deps, extra_code=lambda c: reward_modules(c.params, c.round),
    outs=lambda c: [layout.policy_dir(c.round)], metrics=lambda c: [layout.train_metrics(c.round)],
    applies=lambda c: c.rnd.algo == "ppo", gpu=True,
), StageSpec(
    name="reinforce_pp", module="alignloop.pipeline.stages.ppo", scope="round", order=3, args="--reinforce-pp",
    help="REINFORCE++ (-baseline): the PPO loop with no value model, returns normalised over the batch "
         "(alignloop.ml.ppo, settings in ppo)",
    code=_CODE, params=("seed", "model", "reward_model.ensemble"),
    round_params=("prev", "algo", "start", "ppo", "score", "reward"), deps=_deps, extra_code=lambda c: reward_modules(c.params, c.round),
    outs=lambda c: [layout.policy_dir(c.round)], metrics=lambda c: [layout.train_metrics(c.round)],
    applies=lambda c: c.rnd.algo == "reinforce_pp", gpu=True,
)]


def load_value_model(path: str, model_cfg):
    """A per-token scalar head on a backbone (token classification, 1 label). From a reward model the head's
    weights carry over, so values start as the reward model's score of each prefix."""
    from transformers import AutoModelForTokenClassification

    from alignloop.ml.modeling import _load_kwargs, from_pretrained

    return from_pretrained(AutoModelForTokenClassification, path, "the value model", num_labels=1,
                           **_load_kwargs(model_cfg, local=True))


def run(params, args) -> None:
    from alignloop.ml.inference import check_prompt_lengths
    from alignloop.pipeline.lineage import round_reward, start_policy
    from alignloop.ml.modeling import load_causal_lm, load_tokenizer, to_device
    from alignloop.ml.ppo import PPOTrainer, train
    from alignloop.pipeline.tracking import log_step, stage_run

    r = args.round
    algo = params.rounds[r].algo
    spec = SPECS[1] if algo == "reinforce_pp" else SPECS[0]
    if spec.name != algo or bool(getattr(args, "reinforce_pp", False)) != (algo == "reinforce_pp"):
        raise ConfigError(f"round {r} is a {algo} round, not what this command runs (fix: `alignloop render`, then "
                          f"`dvc repro` runs its stage {algo}_{r})")
    c = params.round_section(r, "ppo")
    start = start_policy(params, r)
    ref_dir = layout.policy_dir("sft") if c.ref == "sft" else start
    rows = files.read_jsonl(PROMPTS, files.validate_prompt, id_key="id")[: c.max_prompts]
    rewards = round_reward(params, r, keep_loaded=True)  # imports the reward functions, then loads the reward models
    prompts = [p["prompt"] for p in rows]
    seed = round_seed(params.seed, r)
    cfg = SimpleNamespace(**c.model_dump(), max_prompt_tokens=params.model.max_length - c.max_new_tokens)

    # algo too: a ppo checkpoint (with a value model) must not resume a reinforce_pp run of the same settings.
    h = hashlib.sha256(json.dumps({"ppo": c.model_dump(), "algo": algo, "seed": seed, "score": params.round_section(
        r, "score").model_dump(), "reward": params.round_section(r, "reward").model_dump(),
        "model": params.model.model_dump()}, sort_keys=True).encode())
    files.hash_paths([Path(p) for p in _deps(Ctx(params, r))] + [Path(ref_dir), *code_paths(spec, params, r)], h,
                     layout.HASH_CACHE)
    ckpt = CKPT_ROOT / r / h.hexdigest()[:16]
    for stale in (CKPT_ROOT / r).glob("*") if (CKPT_ROOT / r).is_dir() else []:
        if stale != ckpt:
            shutil.rmtree(stale, ignore_errors=True)  # another input or setting: never resumed from

    tokenizer = load_tokenizer(start, params.model)
    check_prompt_lengths(PROMPTS, rows, tokenizer, cfg.max_prompt_tokens,
                         f"model.max_length {params.model.max_length} - ppo.max_new_tokens {c.max_new_tokens}")
    policy = to_device(load_causal_lm(start, params.model))
    ref = to_device(load_causal_lm(ref_dir, params.model))
    value = None  # REINFORCE++ has no critic
    if algo == "ppo":
        value = to_device(load_value_model(_value_init_dir(params, r, start), params.model))
        value.config.pad_token_id = tokenizer.pad_token_id
    # Reward functions get each prompt's meta, as the score stage gives it; rollouts carry the prompts themselves.
    meta = {json.dumps(p["prompt"], sort_keys=True): p.get("meta") or {} for p in rows}
    reward_s = [0.0]

    def score(ps, texts):
        t0 = time.perf_counter()
        out = rewards(ps, texts, [meta[json.dumps(p, sort_keys=True)] for p in ps])
        reward_s[0] += time.perf_counter() - t0
        return out

    trainer = PPOTrainer(policy, ref, value, tokenizer, cfg, score, seed=seed,
                         advantage="gae" if algo == "ppo" else "reinforce_pp")
    if (ckpt / "state.pt").is_file():
        trainer.load(ckpt)
        print(f"{algo} {r}: resumed from iteration {trainer.iteration} ({ckpt})", flush=True)
    result = train(trainer, prompts, cfg, ckpt if c.checkpoint_every else None, on_iteration=log_step())

    out = layout.policy_dir(r)
    with files.atomic_dir(out) as tmp:
        trainer.policy.save_pretrained(tmp)  # safetensors weights + config
        tokenizer.save_pretrained(tmp)
    hist = trainer.history
    metrics = {"iterations": result["iterations"], "stopped_early": bool(result["stopped"]),
               "score_first": hist[0]["score"], "score_last": hist[-1]["score"],
               "kl_to_ref_last": hist[-1]["kl_to_ref"], "kl_coef_last": hist[-1]["kl_coef"],
               "entropy_last": hist[-1].get("entropy", 0.0), "response_tokens_last": hist[-1]["response_tokens"],
               # this execution's wall time (a resumed run counts from its resume): sampling and log-probs, the
               # reward, the optimisation passes
               "samples": result["iterations"] * c.rollout_prompts * c.samples_per_prompt,
               "generate_s": trainer.seconds["rollout"] - reward_s[0], "reward_s": reward_s[0],
               "update_s": trainer.seconds["update"]}
    files.write_json(layout.train_metrics(r), metrics)
    shutil.rmtree(CKPT_ROOT / r, ignore_errors=True)  # the policy is saved: nothing left to resume
    print(f"{algo} {r}: {metrics['iterations']} iterations, reward {metrics['score_first']:.3f} -> "
          f"{metrics['score_last']:.3f}, KL to ref {metrics['kl_to_ref_last']:.2f}"
          + (f" ({result['stopped']})" if result["stopped"] else "") + f"; saved {out}/")
    with stage_run(params.experiment, spec.name, {"ppo": c.model_dump(), "prev": params.rounds[r].prev}, r) as run_:
        run_.log_metrics(metrics)  # the curves were streamed, iteration by iteration


def main(argv=None) -> int:
    rpp = "--reinforce-pp" in (sys.argv[1:] if argv is None else argv)
    return stage_main(SPECS[1] if rpp else SPECS[0], run,
                      flags=(("--reinforce-pp", "a reinforce_pp round (stage reinforce_pp_<round>)"),), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
