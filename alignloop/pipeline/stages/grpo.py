"""Stages `grpo` and `rloo`: one online, critic-free RL round through TRL's GRPOTrainer or RLOOTrainer.

The policy starts from the round's start policy; every optimizer step samples ``num_generations`` responses for each
of ``prompts_per_step`` training prompts, scores them with the round's reward (alignloop.ml.rewards.RoundReward: the
same definition the score stage and PPO use — reward models and reward functions, combined) and updates on
group-relative advantages (GRPO: the group's mean, optionally scaled by its std; RLOO: the leave-one-out mean), with
a KL penalty of ``beta`` to the reference (SFT, or the start policy). Nothing here re-implements those losses:
TRL's trainers do it; the stage supplies the prompts, the reward function, the reference and checkpoints.

A round is this one stage (then evaluate and register): the samples live inside training, one batch at a time, so
there is no separate generate/score/pairs output to keep — rerunning the stage regenerates them from its seed.
Checkpoints every ``checkpoint_every`` steps in ``.alignloop/ckpt/`` make a killed stage resume (TRL restores
weights, optimizer, scheduler, RNG and the data position). Outputs: ``data/rounds/<r>/policy`` and
``train_metrics.json`` (the per-step curves stream into the stage's MLflow run).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from alignloop.core import files
from alignloop.core.config import ConfigError
from alignloop.core.seeds import round_seed
from alignloop.pipeline import layout
from alignloop.pipeline.entry import stage_main
from alignloop.pipeline.lineage import reference_deps, reward_deps, reward_modules, start_deps
from alignloop.pipeline.specs import StageSpec, code_paths

PROMPTS = layout.PROMPTS_TRAIN


def _spec(algo: str, trainer: str, args: str = "") -> StageSpec:
    return StageSpec(
        name=algo, module="alignloop.pipeline.stages.grpo", scope="round", order=3, args=args,
        help=f"TRL {trainer} from the start policy against the round's reward (group baseline, no value model)",
        code=("alignloop.ml.training", "alignloop.ml.modeling", "alignloop.ml.inference", "alignloop.ml.rewards",
              "alignloop.core.rewards", "alignloop.core.ensemble", "alignloop.core.seeds", "alignloop.pipeline.lineage"),
        params=("seed", "model", "train", "reward_model.ensemble"),
        round_params=("prev", "algo", "start", algo, "reward", "score"),
        deps=lambda c: [*start_deps(c.params, c.round), *reference_deps(c.params, c.round, c.section(algo).ref),
                        *reward_deps(c.params, c.round), PROMPTS],
        outs=lambda c: [layout.policy_dir(c.round)], metrics=lambda c: [layout.train_metrics(c.round)],
        extra_code=lambda c: reward_modules(c.params, c.round),
        applies=lambda c: c.rnd.algo == algo, gpu=True,
    )


SPECS = [_spec("grpo", "GRPOTrainer"), _spec("rloo", "RLOOTrainer", args="--rloo")]
FLAGS = (("--rloo", "train with TRL's RLOOTrainer (stage rloo_<round>) instead of GRPOTrainer"),)


class StepTimer:
    """Wall time of the trainer's generation and reward calls; the rest of a step is training (bench split)."""

    def __init__(self):
        self.seconds = {"generate": 0.0, "reward": 0.0}

    def wrap(self, fn, key: str):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t0
        return timed


def reward_for_trl(reward, rows_by_id: dict[str, dict]):
    """The round's reward as a TRL reward function. TRL passes the dataset's other columns as keyword lists, so each
    completion arrives with its ``prompt_id``: the reward sees the prompt as the data has it (string or chat
    messages) and its ``meta``, exactly as the score stage gives them, not TRL's rendering of it."""

    def round_reward(prompts, completions, prompt_id, **kwargs) -> list[float]:
        texts = [(c[-1]["content"] if isinstance(c, list) else c).strip() for c in completions]
        rows = [rows_by_id[i] for i in prompt_id]
        return reward([r["prompt"] for r in rows], texts, [r.get("meta") or {} for r in rows])

    return round_reward


def run(params, args) -> None:
    from datasets import Dataset

    from alignloop.ml.inference import check_prompt_lengths
    from alignloop.ml.modeling import as_messages, load_causal_lm, load_tokenizer
    from alignloop.ml.training import (checkpoint_dir, common_args, lora_config, loss_summary, save_trained,
                                       train_resumable)
    from alignloop.pipeline.lineage import round_reward, start_policy
    from alignloop.pipeline.tracking import log_step, stage_run

    r = args.round
    spec = SPECS[1] if args.rloo else SPECS[0]
    algo = spec.name
    if params.rounds[r].algo != algo:
        raise ConfigError(f"round {r} is an algo '{params.rounds[r].algo}' round, not {algo} (fix: run "
                          "`alignloop render` and `dvc repro`, which pick each round's stage)")
    c = params.round_section(r, algo)
    start = start_policy(params, r)
    ref_dir = layout.policy_dir("sft") if c.ref == "sft" else start
    peft = lora_config(params)
    other_ref = c.beta > 0 and Path(ref_dir).resolve() != Path(start).resolve()
    if other_ref and peft is not None:
        raise ConfigError(f"{algo}.ref sft with train.lora.enabled: TRL's reference under LoRA is the start policy "
                          f"with its adapter disabled ({start}), not SFT (fix: rounds.{r}.{algo}.ref: prev, or "
                          f"{algo}.beta: 0)")
    rows = files.read_jsonl(PROMPTS, files.validate_prompt, id_key="id")[: c.max_prompts]
    reward = round_reward(params, r, keep_loaded=True)  # imports the reward functions, then loads the reward models

    tokenizer = load_tokenizer(start, params.model)
    check_prompt_lengths(PROMPTS, rows, tokenizer, params.model.max_length - c.max_new_tokens,
                         f"model.max_length {params.model.max_length} - {algo}.max_new_tokens {c.max_new_tokens}")
    model = load_causal_lm(start, params.model)
    seed = round_seed(params.seed, r)
    ckpt = checkpoint_dir(layout.CKPT_ROOT, f"{algo}_{r}", params, {algo: c.model_dump(), "seed": seed, "round": r,
                          "reward": params.round_section(r, "reward").model_dump(),
                          "score": params.round_section(r, "score").model_dump()},
                          [start, ref_dir, *reward_deps(params, r), PROMPTS], code_paths(spec, params, r),
                          hash_cache=layout.HASH_CACHE)
    # One optimizer step = prompts_per_step prompts x num_generations responses; TRL counts its batch in responses.
    common = common_args(params, lr=c.lr, epochs=1, batch_size=c.prompts_per_step * c.num_generations,
                         checkpoint=ckpt, checkpoint_every=c.checkpoint_every)
    common.pop("max_length")  # the online configs bound prompt and response separately
    common.update(seed=seed, data_seed=seed, max_steps=c.steps, logging_steps=1)
    online = dict(num_generations=c.num_generations, max_completion_length=c.max_new_tokens,
                  temperature=c.temperature, top_p=1.0, top_k=0, beta=c.beta, epsilon=c.epsilon,
                  num_iterations=c.num_iterations, use_vllm=c.use_vllm, disable_dropout=True, log_completions=False)
    if algo == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer

        online.update(loss_type=c.loss_type, scale_rewards=c.scale_rewards)
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer

        online.update(normalize_advantages=c.normalize_advantages)
    if c.use_vllm:
        online.update(vllm_mode="colocate")
    dataset = Dataset.from_list([{"prompt": as_messages(x["prompt"]), "prompt_id": x["id"]} for x in rows])
    # TRL builds its reference from the policy's own path (config._name_or_path: the start policy) and patches it as
    # it patches the policy; for ref: sft it is pointed at SFT while the trainer is built, then put back.
    name_or_path = model.config._name_or_path
    if other_ref:
        model.config._name_or_path = str(ref_dir)
    try:
        trainer = Trainer(model=model, reward_funcs=reward_for_trl(reward, {x["id"]: x for x in rows}),
                          args=Config(**common, **online), train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft)
    finally:
        model.config._name_or_path = name_or_path
    if other_ref:  # the reference must really be SFT: its weights differ from the start policy's
        ref_name = trainer.ref_model.config._name_or_path
        assert Path(ref_name).resolve() == Path(ref_dir).resolve(), (ref_name, ref_dir)
    timer = StepTimer()
    trainer._generate = timer.wrap(trainer._generate, "generate")
    trainer._calculate_rewards = timer.wrap(trainer._calculate_rewards, "reward")

    result = train_resumable(trainer, f"{algo} {r}", log=log_step())  # curves stream into the stage's MLflow run
    out = layout.policy_dir(r)
    if not save_trained(trainer, tokenizer, out):  # merges LoRA; False in accelerate workers other than the main one
        return
    hist = trainer.state.log_history
    runtime = float(result.metrics["train_runtime"])
    samples = trainer.state.global_step * c.prompts_per_step * c.num_generations
    metrics = {"steps": trainer.state.global_step, "samples": samples, "train_runtime_s": runtime,
               "generate_s": timer.seconds["generate"], "reward_s": timer.seconds["reward"],
               "update_s": max(0.0, runtime - timer.seconds["generate"] - timer.seconds["reward"]),
               "samples_per_s_generate": samples / timer.seconds["generate"] if timer.seconds["generate"] else 0.0,
               **loss_summary(hist), **loss_summary(hist, "reward"),
               # TRL's per-step KL estimate (k3 for GRPO, sampled log-ratios for RLOO: it can dip below 0); the
               # round's exact KL to SFT is evaluate's
               **{k.replace("kl_", "kl_estimate_"): v for k, v in loss_summary(hist, "kl").items()}}
    files.write_json(layout.train_metrics(r), metrics)
    shutil.rmtree(ckpt.parent, ignore_errors=True)  # the policy is saved: nothing left to resume
    print(f"{algo} {r}: {metrics['steps']} steps, {samples} samples, reward {metrics.get('reward_first', float('nan')):.3f}"
          f" -> {metrics.get('reward_last', float('nan')):.3f}, KL estimate {metrics.get('kl_estimate_last', float('nan')):.3f}; "
          f"generate {metrics['generate_s']:.1f} s, reward {metrics['reward_s']:.1f} s, update {metrics['update_s']:.1f} s;"
          f" saved {out}/")
    with stage_run(params.experiment, algo, {algo: c.model_dump(), "prev": params.rounds[r].prev}, r) as run_:
        run_.log_metrics(metrics)


def main(argv=None) -> int:
    rloo = "--rloo" in (sys.argv[1:] if argv is None else argv)
    return stage_main(SPECS[1] if rloo else SPECS[0], run, flags=FLAGS, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
