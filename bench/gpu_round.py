"""GPU: one full round on a preset, with tokens/s and model-FLOPs utilisation (MFU) of each training stage and the
wall-time split of the round.

In a scratch project (a copy of alignloop/, params.yaml and configs/ with the preset merged over params.yaml) it runs
the stages DVC would run, in dvc.yaml order: prepare … sft, reward_model, evaluate_sft (set-up), then the round's
generate → score → pairs → dpo → evaluate, each as its own `python -m alignloop.pipeline.stages.<name>` process (timed).

Throughput and MFU per training stage, from the stage's own metrics json:
  * tokens: the non-padding tokens the trained model ran forward and backward on (TRL's count: attention-mask sum
    per batch, or the packed length; prompt tokens included, for DPO chosen and rejected both; all GPUs together).
    Padding is computed but not counted, so padding waste shows up as lower MFU.
  * model FLOPs per token: 2N forward + 2N backward to the activations + 2·N_trainable weight gradients, i.e. 6N for
    full fine-tuning and about 4N with LoRA (N = model parameters, adapters excluded; the attention score term
    and gradient-checkpointing recomputation are not counted, as usual for MFU). DPO adds 2N per token for the
    reference forward when it runs inside the training loop (dpo.precompute_ref_log_probs: false).
  * MFU = FLOPs per token × tokens/s ÷ (dense bf16 peak of the GPU × GPUs used). Tokens/s is over the Trainer's
    train_runtime (the training loop: first-step warm-up included, model loading and saving excluded).
  * Peaks (dense bf16, no sparsity): H100 SXM 989 TFLOP/s, H100 PCIe 756, H200 989, A100 312. Other GPUs and the CPU:
    MFU n/a.

Round split: wall time of the round's stages by kind (generation, scoring, pairs, training, evaluation) and
orchestration = the round's total wall time − those stages' process times (this runner's own work between stages;
under `dvc repro` or the Prefect flow, their overhead per stage comes on top, see bench/flow_overhead.py). Each
stage's process time includes interpreter start-up, imports and model loading, reported per stage as well.

    python bench/gpu_round.py                                   # configs/gpu-100m-from-config.yaml, round r1
    python bench/gpu_round.py --preset configs/gpu-small.yaml   # hub model and data (needs hub access)
    python bench/gpu_round.py --smoke                           # CPU check of the script: tiny model, MFU n/a
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from _out import write_result  # noqa: E402
from _scratch import run_stage, scratch_copy, set_params  # noqa: E402

from alignloop.core.config import merge  # noqa: E402
from alignloop.pipeline import layout  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) by device-name substring, most specific first.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
SETUP = ("prepare", "curate", "base", "sft", "reward_model", "evaluate_sft")
KINDS = {"generate": "generation", "score": "scoring", "pairs": "pairs", "dpo": "training", "raft": "training",
         "ppo": "training", "reinforce_pp": "training", "grpo": "training", "rloo": "training",
         "evaluate": "evaluation"}
# A tiny configuration for --smoke: proves the script end to end on a CPU in a few minutes; its numbers mean nothing.
SMOKE = {
    "task": {"num_prompts": 48, "sft_per_prompt": 2, "pairs_per_prompt": 2},
    "model": {"max_length": 64, "arch": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
                                         "vocab_size": 300}},
    "sft": {"epochs": 2, "batch_size": 16}, "reward_model": {"epochs": 1, "batch_size": 16},
    "generate": {"n": 4, "max_new_tokens": 12}, "pairs": {"min_margin": 0.0}, "dpo": {"batch_size": 8},
    "evaluate": {"max_new_tokens": 12, "samples_per_prompt": 1, "bootstrap_resamples": 100},
}
METRICS = {"sft": layout.SFT_METRICS, "reward_model": layout.RM_METRICS}


def peak_flops(device: str) -> float | None:
    """Dense bf16 peak of ``device`` (a torch device name), or None when unknown (CPU, other GPUs)."""
    return next((peak for key, peak in PEAK_BF16 if key in device), None)


def training_figures(m: dict, peak: float | None, reference_in_loop: bool) -> dict:
    """tokens/s and MFU of one training stage from its metrics json ``m`` (see the module docstring)."""
    n, trainable, tps = m["model_params"], m["trainable_params"], m["train_tokens_per_s"]
    flops_per_token = 4 * n + 2 * trainable + (2 * n if reference_in_loop else 0)
    used = peak * m.get("world_size", 1) if peak else None
    return {"model_params": n, "trainable_params": trainable, "train_tokens": m["train_tokens"], "train_runtime_s": m["train_runtime_s"], "tokens_per_s": tps,
            "flops_per_token": flops_per_token, "model_tflops_per_s": flops_per_token * tps / 1e12,
            "mfu": flops_per_token * tps / used if used else None, "world_size": m.get("world_size", 1)}


def round_split(walls: dict[str, float], round_name: str, total: float) -> dict[str, float]:
    """Seconds per stage kind for the round's stages, and orchestration = total − their sum."""
    split = {k: 0.0 for k in ("generation", "scoring", "pairs", "training", "evaluation")}
    for name, seconds in walls.items():
        kind = name.removesuffix(f"_{round_name}")
        if name.endswith(f"_{round_name}") and kind in KINDS:
            split[KINDS[kind]] += seconds
    split["orchestration"] = total - sum(split.values())
    return split


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", type=Path, default=REPO / "configs/gpu-100m-from-config.yaml")
    ap.add_argument("--round", default="r1", help="the round to run (the params' first round by default)")
    ap.add_argument("--work", type=Path, default=None, help="scratch project directory (default: a new temp dir)")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU instead of the preset")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = ap.parse_args()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = peak_flops(device)
    overrides = SMOKE if a.smoke else yaml.safe_load(a.preset.read_text())
    work, env = scratch_copy(REPO, "alignloop-gpu-round-", parts=("alignloop", "params.yaml", "configs"), work=a.work)
    stages = set_params(work, env, lambda p: p.update(merge(p, overrides)))
    r = a.round
    todo = [s for s in stages if s in SETUP or (s.endswith(f"_{r}") and not s.startswith("register_"))]
    walls: dict[str, float] = {}
    t_round = None
    for name in todo:
        if t_round is None and name.endswith(f"_{r}"):
            t_round = time.perf_counter()
        t0 = time.perf_counter()
        run_stage(work, env, stages[name], name)
        walls[name] = time.perf_counter() - t0
    round_total = time.perf_counter() - t_round

    training = {}
    for name in [s for s in todo if s in METRICS or s.startswith(("dpo_", "raft_"))]:
        m = json.loads((work / METRICS.get(name, layout.train_metrics(r))).read_text())
        training[name] = {**training_figures(m, peak, m.get("reference_forward_in_training", False)),
                          "stage_wall_s": walls[name]}
    result = {
        "device": device, "peak_bf16_flops": peak, "preset": "smoke" if a.smoke else str(a.preset.relative_to(REPO)),
        "round": r, "work": str(work), "model_params": training["sft"]["model_params"],
        "training": training,
        "round_split_s": round_split(walls, r, round_total), "round_total_s": round_total,
        "setup_s": {s: walls[s] for s in SETUP if s in walls}, "stage_wall_s": walls,
        "eval": json.loads((work / layout.eval_paths(r)[0]).read_text()),
        "note": "tokens = non-padding tokens trained on (prompt included); FLOPs/token = 4N + 2N_trainable "
                "(+2N DPO reference in the loop); MFU against the dense bf16 peak x GPUs; n/a without a known peak",
    }
    print(f"\n{device}: {result['model_params'] / 1e6:.1f}M parameters, round {r} in {round_total:.0f} s")
    for name, t in training.items():
        mfu = f"{t['mfu']:.1%}" if t["mfu"] is not None else "n/a"
        print(f"  {name:<14} {t['train_tokens']:>10} tokens  {t['tokens_per_s']:>10.0f} tokens/s  "
              f"{t['model_tflops_per_s']:8.2f} TFLOP/s  MFU {mfu}")
    print("  round split (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["round_split_s"].items()))
    write_result("gpu_round_smoke" if a.smoke else "gpu_round", result)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
