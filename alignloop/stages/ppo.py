"""Stage `ppo`: one PPO round (alignloop/ppo.py) from the round's start policy against the reward model(s).

Inputs: the start policy, the KL reference (SFT or the start policy), the reward model(s) and the training prompts.
The value model starts from the reward model (head included) or the policy. A checkpoint every
``ppo.checkpoint_every`` iterations lives in ``.alignloop/ckpt/<round>/<fingerprint>/``; a rerun after a kill
resumes from it when every input and setting is unchanged (the fingerprint), and it is deleted once the policy is
saved. Outputs: ``data/rounds/<r>/policy`` and ``train_metrics.json`` (per-iteration history in MLflow).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

from alignloop import io
from alignloop.stages._cli import stage_main

PROMPTS = "data/curated/prompts/train.jsonl"
CKPT_ROOT = Path(".alignloop/ckpt")
_CODE = ["alignloop/ppo.py", "alignloop/rl.py", "alignloop/stages/ppo.py", "alignloop/inference.py"]


def load_value_model(path: str, model_cfg):
    """A per-token scalar head on a backbone (token classification, 1 label). From a reward model the head's
    weights carry over, so values start as the reward model's score of each prefix."""
    from transformers import AutoModelForTokenClassification

    from alignloop.modeling import _load_kwargs, from_pretrained

    return from_pretrained(AutoModelForTokenClassification, path, "the value model", num_labels=1,
                           **_load_kwargs(model_cfg, local=True))


def run(params, args) -> None:
    from alignloop.inference import RewardEnsemble, check_prompt_lengths
    from alignloop.lineage import reward_model_dirs, start_policy
    from alignloop.modeling import load_causal_lm, load_tokenizer, to_device
    from alignloop.ppo import PPOTrainer, train
    from alignloop.tracking import stage_run

    r = args.round
    c = params.round_section(r, "ppo")
    start = start_policy(params, r)
    ref_dir = params.policy_dir("sft") if c.ref == "sft" else start
    rm_dirs = reward_model_dirs(params)
    rows = io.read_jsonl(PROMPTS, io.validate_prompt, id_key="id")[: c.max_prompts]
    prompts = [p["prompt"] for p in rows]
    seed = params.seed * 1000 + list(params.rounds).index(r)
    cfg = SimpleNamespace(**c.model_dump(), max_prompt_tokens=params.model.max_length - c.max_new_tokens)

    h = hashlib.sha256(json.dumps({"ppo": c.model_dump(), "seed": seed, "score": params.round_section(r, "score")
                                   .model_dump(), "model": params.model.model_dump()}, sort_keys=True).encode())
    root = Path(__file__).resolve().parents[2]
    io.hash_paths([Path(start), Path(ref_dir), *map(Path, rm_dirs), Path(PROMPTS), *(root / x for x in _CODE)], h)
    ckpt = CKPT_ROOT / r / h.hexdigest()[:16]
    for stale in (CKPT_ROOT / r).glob("*") if (CKPT_ROOT / r).is_dir() else []:
        if stale != ckpt:
            shutil.rmtree(stale, ignore_errors=True)  # another input or setting: never resumed from

    tokenizer = load_tokenizer(start, params.model)
    check_prompt_lengths(PROMPTS, rows, tokenizer, cfg.max_prompt_tokens,
                         f"model.max_length {params.model.max_length} - ppo.max_new_tokens {c.max_new_tokens}")
    policy = to_device(load_causal_lm(start, params.model))
    ref = to_device(load_causal_lm(ref_dir, params.model))
    value = to_device(load_value_model(rm_dirs[0] if c.value_init == "reward_model" else start, params.model))
    value.config.pad_token_id = tokenizer.pad_token_id
    rewards = RewardEnsemble.from_params(params, params.round_section(r, "score"), keep_loaded=True)
    trainer = PPOTrainer(policy, ref, value, tokenizer, cfg,
                         lambda prompts, texts: rewards(prompts, texts, progress=False)[0], seed=seed)
    if (ckpt / "state.pt").is_file():
        trainer.load(ckpt)
        print(f"ppo {r}: resumed from iteration {trainer.iteration} ({ckpt})", flush=True)
    result = train(trainer, prompts, cfg, ckpt if c.checkpoint_every else None)

    out = f"data/rounds/{r}/policy"
    with io.atomic_dir(out) as tmp:
        trainer.policy.save_pretrained(tmp)  # safetensors weights + config
        tokenizer.save_pretrained(tmp)
    hist = trainer.history
    metrics = {"iterations": result["iterations"], "stopped_early": bool(result["stopped"]),
               "score_first": hist[0]["score"], "score_last": hist[-1]["score"],
               "kl_to_ref_last": hist[-1]["kl_to_ref"], "kl_coef_last": hist[-1]["kl_coef"],
               "entropy_last": hist[-1].get("entropy", 0.0), "response_tokens_last": hist[-1]["response_tokens"]}
    io.write_json(f"data/rounds/{r}/train_metrics.json", metrics)
    shutil.rmtree(CKPT_ROOT / r, ignore_errors=True)  # the policy is saved: nothing left to resume
    print(f"ppo {r}: {metrics['iterations']} iterations, reward {metrics['score_first']:.3f} -> "
          f"{metrics['score_last']:.3f}, KL to ref {metrics['kl_to_ref_last']:.2f}"
          + (f" ({result['stopped']})" if result["stopped"] else "") + f"; saved {out}/")
    with stage_run(params.experiment, "ppo", {"ppo": c.model_dump(), "prev": params.rounds[r].prev}, r) as run_:
        for h_ in hist:
            run_.log_metrics({f"train.{k}": v for k, v in h_.items() if k != "iteration"}, step=h_["iteration"])
        run_.log_metrics(metrics)


def main(argv=None) -> int:
    return stage_main("ppo", run, needs_round=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
