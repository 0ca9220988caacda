"""Typed, frozen configuration loaded from params.yaml.

Every field carries help text (``alignloop config --help-fields`` prints it). Loading validates the whole
file at once: unknown keys, wrong types and impossible values are all listed together, each with its key
path, its line in params.yaml and how to fix it, before any stage does work.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alignloop.core.judging import template_errors

PARAMS_FILE = "params.yaml"
ROUND_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``; nested mappings merge key by key (a round can set one budget field)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class ConfigError(ValueError):
    """params.yaml is invalid; the message lists every problem with its key path, line and fix."""


class _RoundsError(ValueError):
    """The rounds check's summary; load_params lists the same problems one by one with their lines instead."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Section):
    """The embedded synthetic task (used when data.source is 'embedded')."""

    num_prompts: int = Field(480, gt=0, description="Distinct prompts generated (topics x templates x styles, capped).")
    sft_per_prompt: int = Field(4, gt=0, description="SFT demonstrations per prompt, of mixed quality.")
    pairs_per_prompt: int = Field(6, ge=0, description="Annotated preference pairs per prompt.")
    annotator_temperature: float = Field(
        0.3, gt=0, description="Bradley-Terry temperature of simulated annotators: P(a>b)=sigmoid((g_a-g_b)/T)."
    )
    good_demo_fraction: float = Field(
        0.35, ge=0, le=1, description="Share of SFT demonstrations written by a careful writer; the rest are noisy."
    )
    intransitive: float = Field(
        0.0, ge=0, description="Weight w of a rock-paper-scissors component among three response styles in the "
        "annotators' true preference P_gold(a>b) = sigmoid((g_a-g_b)/T + w*C(style_a, style_b)), C = +1/-1/0: no "
        "scalar reward explains it. SFT demonstrations then favour one style. 0: the transitive task (annotators "
        "are Bradley-Terry on the gold reward). Evaluation reports gold win-rates as mean P_gold when > 0.")


class DataConfig(_Section):
    source: Literal["embedded", "jsonl", "hub"] = Field(
        "embedded",
        description="'embedded': the synthetic task; 'jsonl': local files in a hub shape; 'hub': a dataset name "
        "or a local dataset directory loaded with datasets.load_dataset.",
    )
    path: str | None = Field(None, description="jsonl: file path; hub: dataset name (e.g. 'Anthropic/hh-rlhf') or local dir.")
    adapter: Literal["auto", "alignloop", "pairs", "messages", "hh"] = Field(
        "auto",
        description="How to read rows: 'pairs' (prompt/chosen/rejected strings), 'messages' (chosen/rejected chat "
        "lists), 'hh' (full HH-style dialogues), 'alignloop' (the raw corpus of the embedded task), 'auto' detects.",
    )
    split: str = Field("train", description="hub: the split to load.")
    revision: str | None = Field(None, description="hub: the dataset revision (commit) to pin for reproducibility.")
    max_rows: int | None = Field(None, gt=0, description="Use only the first N rows of the source (None: all).")

    @model_validator(mode="after")
    def _path_given(self) -> "DataConfig":
        if self.source != "embedded" and not self.path:
            raise ValueError(
                f"data.path is required when data.source is '{self.source}' (fix: set data.path to a .jsonl file, a hub "
                "dataset name or a local dataset directory)"
            )
        return self


class CurateConfig(_Section):
    eval_fraction: float = Field(0.15, gt=0, lt=1, description="Share of distinct prompts held out for evaluation.")
    judge_fraction: float = Field(0.0, ge=0, lt=1, description="Share of distinct prompts whose preference pairs "
                                  "train only the held-out judge model (prefs/judge.jsonl; needs judge_model.enabled).")
    min_response_chars: int = Field(1, ge=1, description="Drop SFT/pair responses shorter than this.")
    max_response_chars: int = Field(2000, gt=0, description="Drop SFT/pair responses longer than this.")
    max_prompt_chars: int = Field(2000, gt=0, description="Drop prompts longer than this.")
    extra_eval_prompts: str | None = Field(
        None, description="A JSONL file of further held-out prompts ({\"prompt\": text or messages, \"id\"?} per "
        "line, e.g. a benchmark's prompt set) evaluated beside the eval split: more prompts, more statistical power, "
        "and no training prompt is lost. Source rows whose prompt is listed here leave training like eval prompts' do.")

    @model_validator(mode="after")
    def _splits_fit(self) -> "CurateConfig":
        if self.eval_fraction + self.judge_fraction >= 0.9:
            raise ValueError(f"eval_fraction {self.eval_fraction} + judge_fraction {self.judge_fraction} leaves under "
                             "10 % of prompts for training (fix: lower one of them)")
        return self


class ArchConfig(_Section):
    """Shape of the Llama-style model built from config when model.name_or_path is 'embedded'."""

    hidden_size: int = Field(192, gt=0, description="Model width.")
    num_layers: int = Field(4, gt=0, description="Transformer blocks.")
    num_heads: int = Field(6, gt=0, description="Attention heads (hidden_size must be divisible by it).")
    intermediate_size: int = Field(512, gt=0, description="MLP width.")
    vocab_size: int = Field(1024, ge=300, description="Byte-level BPE vocabulary trained on the corpus.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ArchConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads} "
                "(fix: make hidden_size a multiple of num_heads)"
            )
        return self


class ModelConfig(_Section):
    name_or_path: str = Field(
        "embedded", description="'embedded' builds a tiny model and tokenizer; else a hub id or local dir (safetensors)."
    )
    revision: str | None = Field(None, description="Hub revision (commit) to pin.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off: only built-in architectures.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype for training/generation.")
    max_length: int = Field(96, gt=8, description="Max tokens of prompt+response seen in training and generation.")
    arch: ArchConfig = Field(default_factory=ArchConfig, description="Tiny-model shape (embedded only).")


class SFTConfig(_Section):
    epochs: float = Field(3.0, gt=0, description="Passes over the demonstrations.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (cosine schedule).")
    batch_size: int = Field(32, gt=0, description="Examples per optimizer step.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps for LR warm-up.")
    packing: bool = Field(False, description="Pack several demonstrations into each max_length row (TRL best-fit "
                          "packing, padding-free; sequence boundaries kept through position ids), so batch_size counts "
                          "packed rows. For long-tailed hub data on a GPU; off: one demonstration per row.")
    checkpoint_every: int = Field(25, ge=0, description="Optimizer steps between resumable checkpoints in "
                                  ".alignloop/ckpt/ (0: none; a killed run then restarts).")


class RewardModelConfig(_Section):
    init: Literal["sft", "base"] = Field("sft", description="Backbone: the SFT policy or the base model.")
    epochs: float = Field(8.0, gt=0, description="Passes over the preference pairs.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    batch_size: int = Field(32, gt=0, description="Pairs per optimizer step.")
    checkpoint_every: int = Field(100, ge=0, description="Optimizer steps between resumable checkpoints in "
                                  ".alignloop/ckpt/ (0: none; a killed run then restarts).")
    ensemble: int = Field(1, ge=1, le=16, description="Reward models trained with seeds seed..seed+k-1 (data/models/rm, "
                          "rm-1, ...); the score stage combines them by score.aggregate.")


class JudgeModelConfig(_Section):
    """A reward model trained on the judge split only (curate.judge_fraction), with its own seed and optionally its
    own backbone; evaluate reports win-rates by it. It never scores, trains or selects anything else, so a policy
    that games the reward model it was optimised against does not game this one."""

    enabled: bool = Field(False, description="Train data/models/judge (stage judge_model) and report judge metrics.")
    init: Literal["base", "sft"] = Field("base", description="Backbone when `backbone` is unset: the base model "
                                         "(independent of the policy's SFT data) or the SFT policy.")
    backbone: str | None = Field(None, description="Another model to build the judge on: a local directory in the "
                                 "hub layout or a hub id (its own tokenizer is used; trust_remote_code stays off).")
    seed_offset: int = Field(1000, description="The judge trains with seed + seed_offset: another head init and data "
                             "order than every reward-model member.")
    epochs: float = Field(8.0, gt=0, description="Passes over the judge split's pairs.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    batch_size: int = Field(32, gt=0, description="Pairs per optimizer step.")
    checkpoint_every: int = Field(100, ge=0, description="Optimizer steps between resumable checkpoints in "
                                  ".alignloop/ckpt/ (0: none).")


class PreferenceModelConfig(_Section):
    """A pairwise preference model P(a > b | x): one forward pass over the prompt and both responses (the PairRM /
    pair-preference-model design), trained on the curated pairs in both orders with the label flipped. Unlike a
    Bradley-Terry reward model it can represent intransitive preferences; the sppo, dno and inpo rounds select and
    train by its win-rates."""

    enabled: bool = Field(False, description="Train data/models/pm (stage preference_model); sppo, dno and inpo "
                          "rounds need it.")
    init: Literal["sft", "base"] = Field("sft", description="Backbone when `backbone` is unset: the SFT policy or the "
                                         "base model (a fresh 1-logit head either way).")
    backbone: str | None = Field(None, description="Another model to build it on: a local directory in the hub "
                                 "layout or a hub id (its own tokenizer; trust_remote_code stays off).")
    epochs: float = Field(4.0, gt=0, description="Passes over the training pairs (each pair is seen in both orders).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    batch_size: int = Field(32, gt=0, description="Ordered pairs per optimizer step.")
    max_length: int | None = Field(None, gt=0, description="Tokens of prompt + both responses; each response is cut "
                                   "to its share (None: 2 x model.max_length).")
    checkpoint_every: int = Field(100, ge=0, description="Optimizer steps between resumable checkpoints in "
                                  ".alignloop/ckpt/ (0: none; a killed run then restarts).")


class LlmJudgeConfig(_Section):
    """Pairwise LLM-as-judge (stage llm_judge_<round>) through an OpenAI-compatible chat endpoint: each pair judged
    in both orders, raw and length-controlled win-rates, answers cached in .alignloop/llm_judge_cache/ so a rerun
    costs no calls. The key is read from the environment variable named here and never logged."""

    enabled: bool = Field(False, description="Judge every round against SFT and the champion with an LLM.")
    base_url: str | None = Field(None, description="The endpoint's /v1 root, e.g. http://127.0.0.1:8000/v1 for "
                                 "`vllm serve`, or a hosted provider's.")
    model: str | None = Field(None, description="Model name the endpoint serves (`GET <base_url>/models`).")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="Name of the environment variable holding the API "
                                    "key (None or unset: no key, as local servers expect). The value never reaches "
                                    "params, logs or MLflow.")
    template: str | None = Field(None, description="The judge's message, with {instruction}, {response_1} and "
                                 "{response_2} once each; the judge must answer 1 or 2. Part of the cache key. None: "
                                 "the built-in AlpacaEval-style template (alignloop/core/judging.py).")
    against: list[Literal["sft", "champion"]] = Field(
        default_factory=lambda: ["sft", "champion"], description="Baselines each round is judged against.")
    samples_per_prompt: int = Field(1, ge=1, description="Evaluation samples per prompt judged (each costs two calls "
                                    "per baseline); at most evaluate.samples_per_prompt.")
    max_prompts: int | None = Field(None, ge=1, description="Judge only the first this many held-out prompts (None: all).")
    concurrency: int = Field(8, ge=1, description="Calls in flight at once.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds one call may take before it is retried.")
    max_retries: int = Field(5, ge=0, description="Retries per call (exponential backoff; on 429, 5xx, timeouts and "
                             "connection errors, honouring Retry-After).")
    max_tokens: int = Field(8, ge=1, description="Tokens the judge may answer with.")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature (0: its most likely verdict).")
    max_unparsed_fraction: float = Field(0.05, ge=0, le=1, description="Fail the stage when more of the answers than "
                                         "this name neither response (counted as ties below it).")

    @model_validator(mode="after")
    def _usable(self):
        errors = template_errors(self.template) if self.template is not None else []
        if errors:
            raise ValueError("template: " + "; ".join(errors) + " (fix: edit llm_judge.template)")
        if self.enabled and not (self.base_url and self.model):
            raise ValueError("llm_judge.enabled needs base_url and model (fix: e.g. base_url: http://127.0.0.1:8000/v1 "
                             "and the model name `vllm serve` was started with)")
        return self


class BudgetConfig(_Section):
    """How the round's total of ``generate.n`` x prompts samples is spread over prompts (see alignloop/budget.py)."""

    strategy: Literal["uniform", "prev_variance", "adaptive"] = Field(
        "uniform", description="uniform: n per prompt. prev_variance: more samples where the previous round's "
        "rewards varied (expected-range greedy; the first round is uniform). adaptive: min_n per prompt, then waves of "
        "`step` more to prompts whose best-worst reward gap is still below target_margin (needs the reward model).")
    min_n: int = Field(2, ge=1, description="Samples every prompt gets.")
    max_n: int = Field(10, ge=1, le=10, description="Most samples one prompt may get.")
    target_margin: float = Field(1.0, ge=0, description="adaptive: a prompt stops once its best-worst gap reaches this.")
    step: int = Field(1, ge=1, description="adaptive: samples added per open prompt per wave.")

    @model_validator(mode="after")
    def _order(self):
        if self.max_n < self.min_n:
            raise ValueError(f"max_n ({self.max_n}) < min_n ({self.min_n}) (fix: raise max_n or lower min_n)")
        return self


class GenerateConfig(_Section):
    n: int = Field(4, ge=1, description="Samples per prompt (best and worst of n make a pair); with a budget, the "
                   "average: the round draws n x prompts samples in all.")
    max_new_tokens: int = Field(32, gt=0, description="Max response tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a response (cut before them).")
    batch_size: int = Field(64, gt=0, description="Prompts per generate() call (each expands to n sequences); also "
                            "the seeding unit: batch b samples with seed + b.")
    max_prompts: int | None = Field(None, gt=0, description="Use the first N training prompts (None: all).")
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="hf: batched KV-cached transformers generate. vllm: offline vLLM (GPU, extra '.[vllm]'). "
        "auto: vllm when installed and a GPU is visible, else hf.")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one model is split over.")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vllm: share of GPU memory for weights and KV "
                                          "cache (leave room for the reward model).")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Per-prompt sample budget.")


class ScoreConfig(_Section):
    batch_size: int = Field(128, gt=0, description="Sequences per reward-model forward pass.")
    aggregate: Literal["mean", "min", "mean_minus_std"] = Field(
        "mean", description="How an ensemble's member rewards combine (reward_model.ensemble > 1): mean, worst case, "
        "or mean - std_penalty * std (conservative against over-optimisation).")
    std_penalty: float = Field(1.0, ge=0, description="lambda of mean_minus_std.")


class PairsConfig(_Section):
    strategy: Literal["max_min", "max_random", "length_penalised"] = Field(
        "max_min", description="Pair selection: best vs worst of n by reward; best vs a random lower one; or best vs "
        "worst of reward - length_penalty * tokens.")
    length_penalty: float = Field(0.0, ge=0, description="Reward lost per response token (strategy length_penalised).")
    min_margin: float = Field(0.1, ge=0, description="Drop prompts whose best-worst reward gap is below this.")
    listwise: bool = Field(False, description="Also write rankings.jsonl: every prompt's responses ranked best first "
                           "(for listwise losses).")


# TRL's DPOTrainer loss types (TRL 1.16), each exposed as dpo.loss_type; a list combines them by dpo.loss_weights.
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "sft")
DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
                      "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "sft"]
# The loss types TRL generalises to another f-divergence than reverse KL ("Beyond Reverse KL", f-DPO).
F_DIVERGENCE_LOSS_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")


class DPOConfig(_Section):
    beta: float = Field(0.1, gt=0, description="KL strength of DPO (higher stays closer to the reference).")
    loss_type: DPOLossType | list[DPOLossType] = Field(
        "sigmoid", description="TRL DPO loss_type: sigmoid (DPO), ipo, hinge (SLiC/RSO), robust, exo_pair, nca_pair, "
        "bco_pair, sppo_hard (SPPO's hard-label case), aot, aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm, "
        "sft; a list combines several, weighted by loss_weights (e.g. MPO: [sigmoid, bco_pair, sft]).")
    loss_weights: list[float] | None = Field(None, description="Weights of a loss_type list, one each (None: 1 each).")
    f_divergence_type: Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"] = Field(
        "reverse_kl", description="The divergence DPO regularises with (f-DPO, 'Beyond Reverse KL'): reverse_kl is "
        "DPO; the others apply to loss types " + ", ".join(F_DIVERGENCE_LOSS_TYPES) + ".")
    f_alpha_divergence_coef: float = Field(0.5, gt=0, lt=1, description="alpha of f_divergence_type "
                                           "alpha_divergence.")
    discopop_tau: float = Field(0.05, gt=0, description="Temperature of the discopop loss's log-ratio modulation.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO label smoothing (sigmoid loss; "
                                   "robust and exo_pair use it too: exo_pair needs it > 0).")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the round's pairs.")
    batch_size: int = Field(16, gt=0, description="Pairs per optimizer step.")
    checkpoint_every: int = Field(20, ge=0, description="Optimizer steps between resumable checkpoints in "
                                  ".alignloop/ckpt/ (0: none; a killed run then restarts).")
    ref: Literal["sft", "prev"] = Field("sft", description="Reference model: fixed at SFT, or the previous round's policy.")
    precompute_ref_log_probs: bool = Field(
        False, description="Compute the reference log-probs of every pair once before training (TRL), so the reference "
        "model is not kept in GPU memory or run at every step.")
    pairs: Literal["sampled", "curated"] = Field(
        "sampled", description="sampled: the round's rejection-sampled pairs (iterative DPO). curated: the curated "
        "training preferences (offline DPO; the round then has no sampling stages).")
    max_pairs: int | None = Field(None, gt=0, description="Train on at most this many pairs (a seeded subset), e.g. "
                                  "to compare offline and iterative DPO at an equal pair budget.")

    @property
    def loss_types(self) -> list[str]:
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)

    @model_validator(mode="after")
    def _trl_would_refuse(self) -> "DPOConfig":
        """What TRL's DPOTrainer refuses only after the models are loaded, refused here before any work."""
        types = self.loss_types
        if not types:
            raise ValueError("dpo.loss_type is an empty list (fix: e.g. sigmoid)")
        if self.loss_weights is not None and len(self.loss_weights) != len(types):
            raise ValueError(f"dpo.loss_weights has {len(self.loss_weights)} weight(s) for {len(types)} loss type(s) "
                             f"{types} (fix: one weight per loss type, or no loss_weights)")
        other = [t for t in types if t not in F_DIVERGENCE_LOSS_TYPES]
        if self.f_divergence_type != "reverse_kl" and other:
            raise ValueError(f"dpo.f_divergence_type {self.f_divergence_type} does not apply to loss type(s) {other} "
                             f"(fix: f_divergence_type: reverse_kl, or a loss type among {list(F_DIVERGENCE_LOSS_TYPES)})")
        if "exo_pair" in types and self.label_smoothing == 0:
            raise ValueError("dpo.loss_type exo_pair needs label_smoothing > 0 (its epsilon; fix: e.g. 0.001)")
        return self


class PPOConfig(_Section):
    """PPO rounds (alignloop/ppo.py): rollouts from the current policy, reward model minus KL to the reference."""

    iterations: int = Field(40, ge=1, description="Rollout-then-optimise iterations.")
    rollout_prompts: int = Field(64, ge=1, description="Prompts per iteration (samples_per_prompt responses each).")
    max_prompts: int | None = Field(None, gt=0, description="Draw rollout prompts from the first N training prompts.")
    max_new_tokens: int = Field(32, gt=0, description="Max response tokens per rollout.")
    temperature: float = Field(1.0, gt=0, description="Rollout sampling temperature (log-probs use the same).")
    ppo_epochs: int = Field(2, ge=1, description="Passes over each rollout batch.")
    minibatch_size: int = Field(16, ge=1, description="Responses per gradient step.")
    lr: float = Field(1e-4, gt=0, description="Policy learning rate (AdamW).")
    value_lr: float = Field(5e-4, gt=0, description="Value model learning rate (AdamW; ppo only).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clip, each model.")
    clip_range: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip epsilon.")
    value_clip: float | None = Field(0.2, gt=0, description="Value clip around the rollout's values (None: off; ppo only).")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount over response tokens.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (ppo only: reinforce_pp has no critic).")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight.")
    kl_coef: float = Field(0.05, ge=0, description="Initial weight of the per-token KL penalty to the reference.")
    kl_controller: Literal["fixed", "adaptive"] = Field("fixed", description="Keep kl_coef, or adapt it towards kl_target.")
    kl_target: float = Field(6.0, gt=0, description="adaptive: target KL to the reference per response.")
    kl_horizon: int = Field(10000, gt=0, description="adaptive: responses over which kl_coef adapts.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator in the reward penalty.")
    kl_limit: float = Field(20.0, gt=0, description="Stop (keeping the last policy under it) when the rollouts' KL to "
                            "the reference exceeds this.")
    target_kl: float | None = Field(None, gt=0, description="Stop an iteration's epochs once the policy moved this far "
                                    "(approx. KL old -> new); None: always run ppo_epochs.")
    normalise_reward: bool = Field(True, description="Scale scores by running mean/std before the KL penalty (ppo only: reinforce_pp normalises its advantages over the batch instead).")
    reward_clip: float | None = Field(5.0, gt=0, description="Clip normalised scores to +-this (None: off; ppo only).")
    whiten_advantages: bool = Field(True, description="Zero-mean, unit-variance advantages per batch (ppo; reinforce_pp always normalises).")
    value_init: Literal["reward_model", "policy"] = Field("reward_model", description="Value model backbone and head "
                                                           "start: the reward model (head included) or the policy.")
    ref: Literal["sft", "prev"] = Field("sft", description="KL reference: the SFT policy or the round's start policy.")
    checkpoint_every: int = Field(5, ge=0, description="Iterations between resumable checkpoints (0: none).")
    samples_per_prompt: int = Field(1, ge=1, description="Responses drawn per rollout prompt (an iteration has "
                                    "rollout_prompts x this responses); REINFORCE++-baseline's group size.")
    baseline: Literal["none", "group_mean"] = Field(
        "none", description="algo reinforce_pp only: group_mean subtracts each prompt's mean score over its "
        "samples_per_prompt responses before the global advantage normalisation (REINFORCE++-baseline); none: "
        "plain REINFORCE++.")


class RaftConfig(_Section):
    """RAFT rounds: SFT (TRL SFTTrainer) on the best of the round's rejection samples."""

    select: Literal["top_k", "top_fraction"] = Field("top_k", description="top_k per prompt, or top fraction overall.")
    k: int = Field(1, ge=1, description="top_k: responses kept per prompt.")
    fraction: float = Field(0.25, gt=0, le=1, description="top_fraction: share of all responses kept.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the selected responses.")
    batch_size: int = Field(16, gt=0, description="Examples per optimizer step.")
    checkpoint_every: int = Field(20, ge=0, description="Optimizer steps between resumable checkpoints in "
                                  ".alignloop/ckpt/ (0: none; a killed run then restarts).")


class _OnlineConfig(_Section):
    """Settings shared by the critic-free online rounds trained through TRL (grpo, rloo)."""

    num_generations: int = Field(4, ge=2, description="Group size: responses sampled per prompt; each is compared with "
                                 "the others of its group (the baseline).")
    prompts_per_step: int = Field(16, ge=1, description="Prompts per optimizer step (prompts_per_step x num_generations "
                                  "responses are generated and scored per step).")
    steps: int = Field(30, ge=1, description="Optimizer steps of the round (TRL max_steps).")
    max_prompts: int | None = Field(None, gt=0, description="Draw prompts from the first N training prompts.")
    max_new_tokens: int = Field(32, gt=0, description="Max response tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the generations (log-probs use it too).")
    # measured (bench/algorithms.py, GRPO, 22 steps): 1e-4 barely moved (KL to SFT 0.12), 1e-3 over-optimised
    # (KL 5.3, gold below 5e-4's); 5e-4: the best gold reward at a KL of 1.9
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (cosine decay after a short warm-up).")
    beta: float = Field(0.05, ge=0, description="KL coefficient to the reference (0: no reference model is loaded).")
    ref: Literal["sft", "prev"] = Field("sft", description="KL reference: the SFT policy or the round's start policy.")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clip range of the importance ratio.")
    num_iterations: int = Field(1, ge=1, description="Optimisation passes over each generated batch (mu in the "
                                "GRPO paper; >1 reuses samples, so the clipped ratio matters).")
    checkpoint_every: int = Field(10, ge=0, description="Optimizer steps between resumable checkpoints in "
                                  ".alignloop/ckpt/ (0: none; a killed run then restarts).")
    use_vllm: bool = Field(False, description="Generate with TRL's vLLM integration (colocated; GPU and the "
                           "'.[vllm]' extra); off: the policy's own generate().")


class GRPOSection(_OnlineConfig):
    """GRPO rounds (TRL GRPOTrainer): group-relative advantages, no value model."""

    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "dapo", description="TRL's loss aggregation: grpo (per-sequence mean), dr_grpo (global constant, Dr. GRPO), "
        "dapo (tokens of the global batch, DAPO), bnpo (tokens of the local batch).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the std of the group, of the batch, or not at all (Dr. GRPO).")


class RLOOSection(_OnlineConfig):
    """RLOO rounds (TRL RLOOTrainer): REINFORCE with the leave-one-out mean of the group as baseline."""

    normalize_advantages: bool = Field(False, description="Whiten the RLOO advantages over the batch.")


class _PreferenceRoundConfig(_Section):
    """Settings shared by the rounds trained by alignloop's own preference loop (stages/selfplay.py): sppo, dno,
    inpo and lipo. The policy starts from the round's start policy (the iterate pi_t); each round reads its own
    samples (generate.n per prompt, n >= 2)."""

    lr: float = Field(2.5e-4, gt=0, description="Peak learning rate (cosine decay after a short warm-up).")
    epochs: float = Field(1.0, gt=0, description="Passes over the round's pairs (lists for lipo).")
    batch_size: int = Field(16, gt=0, description="Pairs (lists) per optimizer step.")
    checkpoint_every: int = Field(20, ge=0, description="Optimizer steps between resumable checkpoints in "
                                  ".alignloop/ckpt/ (0: none; a killed run then restarts).")


class SPPOConfig(_PreferenceRoundConfig):
    """SPPO (Self-Play Preference Optimization, arXiv 2405.00675): per prompt, each sample's win-rate against the
    others (the preference model's P(y > pi_t)); the best and worst samples' log-ratios to the previous iterate are
    regressed onto eta * (win-rate - 1/2)."""

    eta: float = Field(5.0, gt=0, description="Step size: the target log-ratio to the previous iterate is "
                       "eta * (win-rate - 0.5) (SPPO's 1/beta).")
    min_margin: float = Field(0.0, ge=0, description="Skip prompts whose best-worst win-rate gap is below this.")


class DNOConfig(_PreferenceRoundConfig):
    """DNO (Direct Nash Optimization, arXiv 2404.03715), its practical batched on-policy version: per prompt the
    samples with the highest and lowest preference-model win-rate, kept when their gap clears the margin, and a DPO
    (contrastive) update against the previous iterate."""

    beta: float = Field(0.3, gt=0, description="KL strength of the contrastive update against the previous iterate.")
    min_margin: float = Field(0.1, ge=0, description="Margin filter: keep a prompt's pair only when the best-worst "
                              "win-rate gap is at least this.")


class INPOConfig(_PreferenceRoundConfig):
    """INPO (Iterative Nash Policy Optimization, arXiv 2407.00617): a no-regret update with the previous iterate and
    the SFT reference both in the loss, on the best/worst samples by preference-model win-rate."""

    eta: float = Field(3.0, gt=0, description="Learning rate of the no-regret update: the target log-ratio margin "
                       "is eta/2 (IPO's 1/(2 beta) when eta*tau = 1).")
    tau: float = Field(0.1, ge=0, description="KL regularisation to the SFT reference; eta*tau (<= 1) is the weight "
                       "of the reference against the previous iterate in the loss.")
    min_margin: float = Field(0.0, ge=0, description="Skip prompts whose best-worst win-rate gap is below this.")


class LiPOConfig(_PreferenceRoundConfig):
    """LiPO-lambda (arXiv 2402.01878): a listwise loss over every ranked response of a prompt (the pairs stage's
    rankings.jsonl, ranked by the round's reward), each ordered pair weighted by its lambda (gain x rank discount)."""

    beta: float = Field(0.3, gt=0, description="Scale of the policy's log-ratio to the reference (the list scores).")
    ref: Literal["sft", "prev"] = Field("prev", description="Reference model: fixed at SFT, or the previous round's "
                                        "policy.")
    lambda_weights: bool = Field(True, description="LiPO-lambda's weights; false: every ordered pair weighs 1 (the "
                                 "pair-logistic ablation, DPO over all pairs).")


class RewardSourceConfig(_Section):
    """One source of a round's reward: the reward model(s), or a Python reward function."""

    reward_model: Literal["ensemble"] | int | None = Field(
        None, description="'ensemble': the reward model(s) combined by score.aggregate; k: ensemble member k only "
        "(0 = data/models/rm, k = data/models/rm-k).")
    function: str | None = Field(
        None, description="'module:function' from the project's own modules, called as f(prompts, completions, "
        "meta=[...]) -> list of floats (TRL's reward-function contract), e.g. "
        "alignloop.core.reward_functions:length_window.")
    weight: float = Field(1.0, description="Weight of this source (weighted_sum), or scale of its normalised value "
                          "(maxmin).")
    name: str | None = Field(None, description="Column name in scores.jsonl's source_rewards and in metrics (default: "
                             "'rm', 'rm<k>' or the function's name).")

    @model_validator(mode="after")
    def _one_kind(self) -> "RewardSourceConfig":
        if (self.reward_model is None) == (self.function is None):
            raise ValueError("a reward source is either reward_model or function, not both or neither (fix: e.g. "
                             "{reward_model: ensemble, weight: 1.0} or {function: 'pkg.module:fn', weight: 0.5})")
        if self.function is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", self.function):
            raise ValueError(f"function {self.function!r} is not 'module:function' (fix: e.g. "
                             "alignloop.core.reward_functions:length_window)")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.function is not None:
            return self.function.rsplit(":", 1)[1]
        return "rm" if self.reward_model == "ensemble" else f"rm{self.reward_model}"


class RewardConfig(_Section):
    """The round's reward, one definition for scoring (rejection sampling), PPO, REINFORCE++, GRPO and RLOO."""

    sources: list[RewardSourceConfig] = Field(
        default_factory=lambda: [RewardSourceConfig(reward_model="ensemble")],
        description="Reward sources, each {reward_model: ensemble} (or a member index k) or {function: 'module:function'}, with a weight.")
    aggregate: Literal["weighted_sum", "maxmin"] = Field(
        "weighted_sum", description="weighted_sum: sum of weight x source. maxmin: the minimum over sources of weight "
        "x the source z-normalised over the scored batch (MaxMin-RLHF's objective).")

    @model_validator(mode="after")
    def _sources(self) -> "RewardConfig":
        if not self.sources:
            raise ValueError("reward.sources is empty (fix: at least one source, e.g. [{reward_model: ensemble}])")
        labels = [s.label for s in self.sources]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"reward.sources name {dup} more than once (fix: give each a distinct 'name')")
        if self.aggregate == "maxmin" and len(self.sources) < 2:
            raise ValueError("reward.aggregate maxmin needs at least two sources (fix: add a source or use "
                             "weighted_sum)")
        return self

    @property
    def is_default(self) -> bool:
        """One reward-model source at weight 1: the reward is the (ensemble) reward model's score, as before."""
        return self == RewardConfig()

    @property
    def function_modules(self) -> list[str]:
        """The modules of the reward functions, in source order: code the reward depends on."""
        return list(dict.fromkeys(s.function.split(":", 1)[0] for s in self.sources if s.function))

    def members(self, ensemble: int) -> list[int]:
        """The reward-model members the sources read, each once, in order: all ``ensemble`` of them for an
        'ensemble' source, member k for a k source (k may be out of range: the callers say so)."""
        used = set()
        for s in self.sources:
            if s.reward_model == "ensemble":
                used.update(range(ensemble))
            elif s.reward_model is not None:
                used.add(s.reward_model)
        return sorted(used)


class EvaluateConfig(_Section):
    max_new_tokens: int = Field(32, gt=0, description="Max response tokens.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature for evaluation samples.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    samples_per_prompt: int = Field(4, ge=1, description="Samples per held-out prompt.")
    kl_samples_per_prompt: int = Field(4, ge=1, description="Samples per held-out prompt for the KL estimates, "
                                       "drawn from the policy as it is (temperature 1, top_p 1); when temperature and "
                                       "top_p are 1 and this equals samples_per_prompt, the quality samples are reused.")
    batch_size: int = Field(64, gt=0, description="Prompts per generate() call.")
    seed: int = Field(1234, description="Evaluation sampling seed (fixed so rounds are compared on equal terms).")
    bootstrap_resamples: int = Field(1000, ge=100, description="Bootstrap resamples (over prompts) for the 95 % "
                                     "confidence intervals.")


EVAL_METRICS = ("proxy_reward", "gold_reward", "win_rate_vs_sft_proxy", "win_rate_vs_sft_gold", "kl_to_sft",
                "length_tokens", "distinct_2")
EvalMetric = Literal["proxy_reward", "gold_reward", "win_rate_vs_sft_proxy", "win_rate_vs_sft_gold",
                     "win_rate_vs_champion_proxy", "win_rate_vs_champion_gold", "judge_reward",
                     "win_rate_vs_sft_judge", "win_rate_vs_champion_judge", "proxy_judge_gap",
                     "win_rate_vs_sft_llm", "win_rate_vs_champion_llm", "lc_win_rate_vs_sft_llm",
                     "lc_win_rate_vs_champion_llm", "llm_first_position_rate", "kl_to_sft", "kl_to_prev",
                     "length_tokens",
                     "distinct_1", "distinct_2", "self_bleu", "ranking_accuracy", "ranking_accuracy_vs_sft",
                     "proxy_gold_gap"]
ROUND_METRICS: tuple[str, ...] = get_args(EvalMetric)  # the scalars of a round's eval.json: registry tags, report rows


class GateConfig(_Section):
    """When a round's candidate becomes champion. Metrics are keys of the round's eval.json."""

    beat_champion: list[EvalMetric] = Field(
        default_factory=lambda: ["proxy_reward"],
        description="Metrics (higher is better) on which the candidate must exceed the champion by min_improvement; "
        "before any round is promoted the champion is SFT.")
    min_improvement: float = Field(0.0, ge=0, description="Margin the candidate must beat the champion by, per metric.")
    max: dict[EvalMetric, float] = Field(default_factory=lambda: {"kl_to_sft": 20.0},
                                         description="Caps: metric -> highest allowed value (e.g. kl_to_sft).")
    min: dict[EvalMetric, float] = Field(default_factory=dict,
                                         description="Floors: metric -> lowest allowed value (e.g. win_rate_vs_sft_proxy).")
    lower_bound: dict[EvalMetric, float] = Field(
        default_factory=dict,
        description="Metric -> value the low end of its 95 % bootstrap interval must exceed, e.g. "
        "{win_rate_vs_champion_judge: 0.5}: the independent judge prefers the candidate, beyond sampling noise.")


class RegistryConfig(_Section):
    """MLflow model registry: a version per round, `candidate`/`champion` aliases, the promotion gate."""

    enabled: bool = Field(True, description="Register each round's policy (stage register_<round>).")
    model_name: str | None = Field(None, description="Registered model name (None: '<experiment>-policy').")
    log_weights: bool = Field(False, description="Also upload the weights as run artifacts (default: record the "
                              "local location and content hash only).")
    gate: GateConfig = Field(default_factory=GateConfig, description="Promotion gate.")


class OrchestrationConfig(_Section):
    """Read by the Prefect flows only: no DVC stage depends on it, so changing it reruns nothing."""

    retries: int = Field(1, ge=0, description="Prefect retries of a failed stage task before the flow fails.")
    retry_delay_s: float = Field(10.0, ge=0, description="Seconds between those retries.")
    gpus: int | None = Field(None, ge=0, description="Size of the 'gpu' concurrency limit (None: the GPUs visible).")
    generate_shards: int = Field(
        1, ge=1, description="Split a round's generation into this many shard tasks run in parallel (one GPU each; "
        "Ray tasks with the Ray task runner). The merged samples are identical to one shard.")
    score_shards: int = Field(
        1, ge=1, description="Split a round's reward-model scoring into this many shard tasks the same way (each "
        "shard scores whole blocks of 8 score batches). The merged scores are identical to one shard.")


class RetentionConfig(_Section):
    """Old rounds' policy weights (`alignloop retain`, run by the pipeline flow after the report): no DVC stage
    depends on it, so changing it reruns nothing."""

    keep_last: int = Field(0, ge=0, description="Keep the policies of the last N rounds that ran and drop older ones "
                           "from the workspace and the DVC cache, never one the registry points at (an alias such as "
                           "champion or candidate, or the rollback target). 0: keep every round.")
    gc: bool = Field(False, description="Then also `dvc gc --workspace`: delete cache objects dvc.lock no longer names "
                     "(outputs of earlier params, and of other git commits unless pushed to a DVC remote).")


class LoraConfig(_Section):
    """Low-rank adapters (PEFT) instead of full fine-tuning; the stage merges them before saving a full model."""

    enabled: bool = Field(False, description="Train LoRA adapters (PEFT) in sft, dpo and raft instead of every weight; "
                          "the saved policy is the merged full model, so later stages load it unchanged.")
    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' (every linear layer but the LM head) or a "
        "list of module names, e.g. [q_proj, v_proj].")
    reward_model: bool = Field(False, description="Also train the reward model(s) with LoRA (the score head is trained "
                               "in full); off: full fine-tuning.")


class TrainConfig(_Section):
    """Shared by the TRL-trained stages (sft, reward_model, dpo, raft): memory savers and multi-GPU launch."""

    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass instead of "
                                         "storing them: less memory, about a third more compute (TRL's default, on). "
                                         "Off for speed when activations fit.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters (PEFT).")
    distributed: Literal["auto", "off", "ddp", "fsdp", "zero2"] = Field(
        "auto", description="With more than one visible CUDA GPU the stage relaunches itself through `accelerate "
        "launch` with alignloop/ml/accelerate/ddp.yaml, fsdp.yaml or zero2.yaml (DeepSpeed ZeRO-2), one process per GPU "
        "(auto: ddp). off: one process. batch_size stays the global batch (split over the processes).")
    processes: int = Field(0, ge=0, le=64, description="Training processes for sft, reward_model, dpo and raft, each "
                           "with its share of every batch, gradients all-reduced (DDP). 0: one per visible CUDA GPU "
                           "when there are two or more, else one process. N >= 2: N processes; on a machine without "
                           "CUDA GPUs, N CPU processes over gloo (the multi-GPU code path, runnable anywhere). "
                           "Every batch_size must be divisible by it. A checkpoint resumes only under the same count.")

    @model_validator(mode="after")
    def _lora_fsdp(self) -> "TrainConfig":
        if self.processes >= 2 and self.distributed == "off":
            raise ValueError(f"train.processes {self.processes} with distributed 'off' (fix: distributed: auto, or "
                             "processes: 0)")
        if self.lora.enabled and self.distributed == "fsdp":
            raise ValueError("lora.enabled with distributed 'fsdp' is not supported here (merging sharded adapters "
                             "before the save) (fix: distributed: ddp or zero2)")
        return self


class RoundConfig(_Section):
    algo: Literal["dpo", "ppo", "raft", "grpo", "rloo", "reinforce_pp", "sppo", "dno", "inpo", "lipo"] = Field(
        "dpo", description="dpo: pairs from rejection sampling, TRL DPO. ppo: on-policy PPO with a value model. raft: "
        "SFT on the best samples. grpo / rloo: TRL's GRPOTrainer / RLOOTrainer (group baselines, no value model). "
        "reinforce_pp: REINFORCE++ (the PPO loop without a critic; ppo.baseline group_mean for REINFORCE++-baseline). "
        "sppo / dno / inpo: self-play on the round's samples ranked by the preference model's win-rates "
        "(preference_model.enabled). lipo: LiPO-lambda's listwise loss over the round's ranked samples.")
    prev: str = Field(description="The round before this one: 'sft' or an earlier round's name.")
    start: Literal["prev", "champion"] = Field(
        "prev", description="Start from prev's policy, or from the champion after prev's registration (a round the "
        "gate rejected then does not seed the next one).")
    generate: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level generate section.")
    score: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level score section.")
    pairs: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level pairs section.")
    dpo: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level dpo section.")
    ppo: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level ppo section.")
    raft: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level raft section.")
    grpo: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level grpo section.")
    rloo: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level rloo section.")
    reward: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level reward section.")
    sppo: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level sppo section.")
    dno: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level dno section.")
    inpo: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level inpo section.")
    lipo: dict[str, Any] = Field(default_factory=dict, description="Overrides of the top-level lipo section.")


# The params section each algorithm trains with: its own, except REINFORCE++, which is the PPO loop without a critic.
ALGO_SECTION: dict[str, str] = {"dpo": "dpo", "ppo": "ppo", "raft": "raft", "grpo": "grpo", "rloo": "rloo",
                                "reinforce_pp": "ppo", "sppo": "sppo", "dno": "dno", "inpo": "inpo", "lipo": "lipo"}
# Rounds that select and train by the preference model's win-rates (the preference_model stage must be on).
PREFERENCE_ALGOS = ("sppo", "dno", "inpo")

_ROUND_SECTIONS: dict[str, type[_Section]] = {
    "generate": GenerateConfig, "score": ScoreConfig, "pairs": PairsConfig, "dpo": DPOConfig, "ppo": PPOConfig,
    "raft": RaftConfig, "grpo": GRPOSection, "rloo": RLOOSection, "reward": RewardConfig, "sppo": SPPOConfig,
    "dno": DNOConfig, "inpo": INPOConfig, "lipo": LiPOConfig,
}


def _round_errors(rounds: dict, bases: dict[str, dict], registry_enabled: bool = True) -> list[dict]:
    """Problems of ``rounds`` (name -> mapping) as pydantic-style error dicts with full ``loc`` paths.

    Checks round names, that each ``prev`` is 'sft' or an earlier round, and each override section merged over
    ``bases[section]`` (the top-level section's values). Shared by the model validator and :func:`load_params`,
    which reruns it on the raw YAML when field errors stopped pydantic before the model validator.
    """
    errors: list[dict] = []
    seen = ["sft"]
    for name, rnd in rounds.items():
        if not isinstance(name, str) or not ROUND_NAME.match(name) or name == "sft":
            errors.append({"loc": ("rounds", name), "type": "round",
                           "msg": "invalid round name (fix: letters, digits, '_'; not 'sft')"})
        rnd = rnd if isinstance(rnd, dict) else {}
        prev = rnd.get("prev")
        if isinstance(prev, str) and prev not in seen:
            errors.append({"loc": ("rounds", name, "prev"), "type": "round",
                           "msg": f"'{prev}' is not 'sft' or an earlier round (fix: one of {seen})"})
        seen.append(name)
        if rnd.get("start") == "champion" and not registry_enabled:
            errors.append({"loc": ("rounds", name, "start"), "type": "round",
                           "msg": "'champion' needs registry.enabled: true (fix: enable the registry or use start: prev)"})
        merged = {}
        for section, model in _ROUND_SECTIONS.items():
            override = rnd.get(section)
            if not isinstance(override, dict):
                merged[section] = bases[section]
                continue  # absent, or a wrong type that field validation reports
            try:
                merged[section] = model.model_validate(merge(bases[section], override)).model_dump()
            except ValidationError as exc:
                errors.extend({**e, "loc": ("rounds", name, section, *e["loc"])} for e in exc.errors())
        errors.extend({"loc": ("rounds", name, *loc), "type": "round", "msg": msg}
                      for loc, msg in _algo_errors(rnd.get("algo", "dpo"), merged))
    return errors


def _algo_errors(algo: str, sections: dict[str, dict]) -> list[tuple[tuple, str]]:
    """Settings a round's algorithm cannot run with, as (key path within the round, message with the fix)."""
    out = []
    ppo = sections.get("ppo") or {}
    if algo == "reinforce_pp" and ppo.get("baseline") == "group_mean" and ppo.get("samples_per_prompt", 1) < 2:
        out.append((("ppo", "samples_per_prompt"), "REINFORCE++-baseline subtracts the mean of a prompt's responses, "
                    f"so it needs >= 2 per prompt, got {ppo.get('samples_per_prompt')} (fix: ppo.samples_per_prompt: "
                    "4, or ppo.baseline: none)"))
    gen_n = (sections.get("generate") or {}).get("n", 2)
    if algo in (*PREFERENCE_ALGOS, "lipo") and isinstance(gen_n, int) and gen_n < 2:
        out.append((("generate", "n"), f"{algo} compares each prompt's samples with one another, so it needs >= 2 per "
                    f"prompt, got {gen_n} (fix: generate.n: 4)"))
    inpo = sections.get("inpo") or {}
    eta, tau = inpo.get("eta"), inpo.get("tau")
    if algo == "inpo" and isinstance(eta, (int, float)) and isinstance(tau, (int, float)) and eta * tau > 1:
        out.append((("inpo", "tau"), f"eta * tau = {eta * tau:g} > 1: the reference's weight in INPO's loss must be "
                    f"in [0, 1] (fix: tau <= {1 / eta:g} for eta {eta:g})"))
    if algo == "ppo" and ppo.get("baseline", "none") != "none":
        out.append((("ppo", "baseline"), "ppo's baseline is its value model; baseline applies to algo reinforce_pp "
                    "(fix: ppo.baseline: none, or algo: reinforce_pp)"))
    return out


class Params(_Section):
    experiment: str = Field("alignloop", description="MLflow experiment name; registered model is '<experiment>-policy'.")
    seed: int = Field(0, description="Global seed: corpus, splits, init, sampling.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Embedded synthetic task.")
    data: DataConfig = Field(default_factory=DataConfig, description="Where the raw data comes from.")
    curate: CurateConfig = Field(default_factory=CurateConfig, description="Validation, dedup, filters and split.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model and tokenizer.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning (TRL SFTTrainer).")
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig, description="Reward model (TRL RewardTrainer).")
    judge_model: JudgeModelConfig = Field(default_factory=JudgeModelConfig,
                                          description="Held-out judge model (evaluation only).")
    llm_judge: LlmJudgeConfig = Field(default_factory=LlmJudgeConfig,
                                      description="LLM-as-judge through an OpenAI-compatible endpoint (evaluation only).")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="Default rejection-sampling settings.")
    score: ScoreConfig = Field(default_factory=ScoreConfig, description="Default reward scoring settings.")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="Default pair selection.")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="Default DPO settings (TRL DPOTrainer).")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="Default PPO settings (alignloop/ppo.py).")
    raft: RaftConfig = Field(default_factory=RaftConfig, description="Default RAFT settings (TRL SFTTrainer).")
    grpo: GRPOSection = Field(default_factory=GRPOSection, description="Default GRPO settings (TRL GRPOTrainer).")
    rloo: RLOOSection = Field(default_factory=RLOOSection, description="Default RLOO settings (TRL RLOOTrainer).")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="The reward rounds optimise and select by: "
                                 "reward models and reward functions, combined.")
    preference_model: PreferenceModelConfig = Field(default_factory=PreferenceModelConfig,
                                                    description="Pairwise preference model (sppo, dno, inpo rounds).")
    sppo: SPPOConfig = Field(default_factory=SPPOConfig, description="Default SPPO settings (alignloop's loop).")
    dno: DNOConfig = Field(default_factory=DNOConfig, description="Default DNO settings (alignloop's loop).")
    inpo: INPOConfig = Field(default_factory=INPOConfig, description="Default INPO settings (alignloop's loop).")
    lipo: LiPOConfig = Field(default_factory=LiPOConfig, description="Default LiPO-lambda settings (alignloop's loop).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training settings shared by sft, "
                               "reward_model, dpo and raft (gradient checkpointing, LoRA, multi-GPU).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation on held-out prompts.")
    rounds: dict[str, RoundConfig] = Field(default_factory=dict, description="Ordered rounds, each naming its 'prev'.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="MLflow model registry and promotion.")
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig,
                                               description="Prefect flow settings (retries, GPU slots, shards).")
    retention: RetentionConfig = Field(default_factory=RetentionConfig,
                                       description="Dropping old rounds' policy weights (workspace and DVC cache).")

    @model_validator(mode="after")
    def _judge_has_data(self) -> "Params":
        if self.judge_model.enabled and self.curate.judge_fraction == 0:
            raise ValueError("judge_model.enabled needs a judge split (fix: set curate.judge_fraction, e.g. 0.15)")
        if self.curate.judge_fraction > 0 and not self.judge_model.enabled:
            raise ValueError("curate.judge_fraction sets prompts aside for a judge that is not trained "
                             "(fix: set judge_model.enabled: true, or judge_fraction: 0)")
        judged = [m for m in (*self.registry.gate.beat_champion, *self.registry.gate.max, *self.registry.gate.min,
                              *self.registry.gate.lower_bound) if "judge" in m]
        if judged and not self.judge_model.enabled:
            raise ValueError(f"registry.gate uses {', '.join(sorted(set(judged)))} but no judge is trained "
                             "(fix: set judge_model.enabled: true and curate.judge_fraction)")
        by_llm = [m for m in (*self.registry.gate.beat_champion, *self.registry.gate.max, *self.registry.gate.min,
                              *self.registry.gate.lower_bound) if m.endswith("_llm") or m.startswith("llm_")]
        if by_llm and not self.llm_judge.enabled:
            raise ValueError(f"registry.gate uses {', '.join(sorted(set(by_llm)))} but the LLM judge is off "
                             "(fix: set llm_judge.enabled: true with its base_url and model)")
        if self.llm_judge.enabled and self.llm_judge.samples_per_prompt > self.evaluate.samples_per_prompt:
            raise ValueError(f"llm_judge.samples_per_prompt ({self.llm_judge.samples_per_prompt}) > "
                             f"evaluate.samples_per_prompt ({self.evaluate.samples_per_prompt}): it judges evaluation "
                             "samples (fix: lower it or raise evaluate.samples_per_prompt)")
        return self

    @model_validator(mode="after")
    def _check_rounds(self) -> "Params":
        errors = _round_errors(
            {name: rnd.model_dump() for name, rnd in self.rounds.items()},
            {section: getattr(self, section).model_dump() for section in _ROUND_SECTIONS},
            registry_enabled=self.registry.enabled,
        )
        if errors:
            raise _RoundsError("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors))
        return self

    @model_validator(mode="after")
    def _preference_model_on(self) -> "Params":
        need = [n for n, rnd in self.rounds.items() if rnd.algo in PREFERENCE_ALGOS]
        if need and not self.preference_model.enabled:
            raise ValueError(f"round(s) {', '.join(need)} select and train by a preference model, and none is "
                             "trained (fix: set preference_model.enabled: true)")
        return self

    @model_validator(mode="after")
    def _reward_members(self) -> "Params":
        k = self.reward_model.ensemble
        where = [("reward", self.reward)] + [(f"rounds.{n}.reward", self.round_section(n, "reward"))
                                             for n, rnd in self.rounds.items() if rnd.reward]
        bad = [f"{w}: reward_model {s.reward_model}" for w, cfg in where for s in cfg.sources
               if isinstance(s.reward_model, int) and not 0 <= s.reward_model < k]
        if bad:
            raise ValueError(f"{'; '.join(bad)} is not a member of the {k}-member ensemble (fix: a member index 0.."
                             f"{k - 1}, 'ensemble', or raise reward_model.ensemble)")
        return self

    # --- per-round effective settings ---------------------------------------------------------
    def round_section(self, round_name: str, section: str):
        rnd = self.rounds[round_name]
        base = getattr(self, section)
        return type(base)(**merge(base.model_dump(), getattr(rnd, section)))

    def resolved(self) -> dict:
        """Every value, defaults included, as plain data; each round carries its own algo/prev/start and every
        per-round section already merged over the top-level one. ``alignloop render`` writes this to
        params.resolved.yaml, which the DVC stages' ``params`` read, so a changed default reruns exactly the stages
        that read it and an edited docstring here reruns nothing."""
        out = self.model_dump(mode="json")
        out["rounds"] = {
            name: {"algo": rnd.algo, "prev": rnd.prev, "start": rnd.start,
                   **{s: self.round_section(name, s).model_dump(mode="json") for s in _ROUND_SECTIONS}}
            for name, rnd in self.rounds.items()
        }
        return out

    @property
    def model_name(self) -> str:
        return self.registry.model_name or f"{self.experiment}-policy"


# --- loading with line numbers ------------------------------------------------------------------


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict:
    """Map key paths (tuples) to 1-based line numbers in the YAML source."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            p = path + (key_node.value,)
            out[p] = key_node.start_mark.line + 1
            _line_index(value_node, p, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            p = path + (i,)
            out[p] = item.start_mark.line + 1
            _line_index(item, p, out)
    return out


_FIXES = {
    "extra_forbidden": "remove it or check its spelling against `alignloop config --help-fields`",
    "missing": "add it",
}


def _format_errors(errors: list[dict], source: str, lines: dict) -> str:
    msgs = []
    for e in errors:
        loc = tuple(e["loc"])
        # Find the deepest key path that has a line number.
        line = None
        for k in range(len(loc), 0, -1):
            if loc[:k] in lines:
                line = lines[loc[:k]]
                break
        key = ".".join(str(p) for p in loc) or "(top level)"
        where = f"{source}:{line}" if line else source
        if e["type"] in ("value_error", "round"):
            # Our own checks: the message names the problem and its fix.
            msgs.append(f"{where}: {key}: {str(e['msg']).removeprefix('Value error, ')}")
            continue
        fix = _FIXES.get(e["type"], "give a value of the right type/range")
        got = f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e.get("input"), dict) else ""
        msgs.append(f"{where}: {key}: {e['msg']}{got} (fix: {fix})")
    return f"{source}: {len(msgs)} problem(s):\n" + "\n".join(f"  {m}" for m in msgs)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found (fix: run from the repo root, or copy params.yaml from the repo)")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (fix: see README 'Params reference')")
    lines = _line_index(node) if node is not None else {}
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        # Field errors stop pydantic before the rounds check (a model validator), so the rounds are checked here
        # on the raw mapping instead, and every problem is listed at once, each with its own line.
        errors = [e for e in exc.errors()
                  if e["loc"] or not isinstance((e.get("ctx") or {}).get("error"), _RoundsError)]
        rounds = raw.get("rounds") if isinstance(raw.get("rounds"), dict) else {}
        bases = {}
        for section, model in _ROUND_SECTIONS.items():
            try:
                bases[section] = model.model_validate(raw.get(section) or {}).model_dump()
            except ValidationError:  # reported above; check the round overrides against the defaults
                bases[section] = model().model_dump()
        registry = raw.get("registry") if isinstance(raw.get("registry"), dict) else {}
        errors += _round_errors(rounds, bases, registry_enabled=registry.get("enabled", True) is not False)
        raise ConfigError(_format_errors(errors, str(path), lines)) from None


def field_help(model: type[BaseModel] = Params, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, help) for every field, recursively — the params reference."""
    rows = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.append((key, "", f.description or ""))
            rows.extend(field_help(ann, key + "."))
        else:
            value = None if f.is_required() else f.get_default(call_default_factory=True)
            if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
                value = [v.model_dump(exclude_defaults=True) or v.model_dump() for v in value]  # as params.yaml writes it
            default = "" if f.is_required() else repr(value)
            rows.append((key, default, f.description or ""))
    return rows
