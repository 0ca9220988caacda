"""Training throughput in one process vs several (``train.processes``), on this machine's CPUs: the multi-GPU code
path (accelerate launch, DDP over gloo) measured where it can run anywhere.

Runs in a scratch copy of the finished embedded pipeline (default: this repo after `make demo`): its curated data,
base model, SFT policy and round r1's pairs. Per process count it runs the sft, reward_model and dpo_r1 stage
modules as DVC would call them, at the demo's params, and reports per stage the wall time of the stage process
(start-up and saving included), the Trainer's runtime and tokens/s, the last logged loss, and how far the weights
are from the one-process run's (max |difference|; 0 means bit-identical).

    python bench/multiprocess.py                 # 1 and 2 processes, ~8 min on 2 CPU cores
    python bench/multiprocess.py --processes 1,2,4 --stages sft,dpo_r1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _out import write_result  # noqa: E402
from _scratch import PARTS, run_stage, scratch_copy, set_params  # noqa: E402
from alignloop.pipeline import layout  # noqa: E402

STAGES = {"sft": (layout.SFT, layout.SFT_METRICS), "reward_model": (layout.RM, layout.RM_METRICS),
          "dpo_r1": (layout.policy_dir("r1"), layout.train_metrics("r1"))}


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=REPO, help="a finished embedded pipeline (default: this repo)")
    ap.add_argument("--processes", default="1,2", help="process counts to compare, the first is the reference")
    ap.add_argument("--stages", default=",".join(STAGES), help="which of the training stages to run")
    a = ap.parse_args()
    chosen = {k: STAGES[k] for k in a.stages.split(",")}
    counts = [int(x) for x in a.processes.split(",")]
    work, env = scratch_copy(a.project, "alignloop-mp-", parts=(*PARTS, layout.round_dir("r1")))
    rows, ref = [], {}
    try:
        for n in counts:
            stages = set_params(work, env, lambda p: p.setdefault("train", {}).update(processes=n))
            for name, (out, metrics_path) in chosen.items():
                shutil.rmtree(work / ".alignloop" / "ckpt", ignore_errors=True)  # a fresh run, not a resume
                t = time.perf_counter()
                run_stage(work, env, stages[name], name)
                wall = time.perf_counter() - t
                m = json.loads((work / metrics_path).read_text())
                w = _weights(work / out)
                ref.setdefault(name, w)
                rows.append({"stage": name, "processes": n, "stage_wall_s": round(wall, 1),
                             "train_runtime_s": round(m["train_runtime_s"], 1),
                             "train_tokens_per_s": round(m.get("train_tokens_per_s", 0.0)),
                             "world_size": m.get("world_size"), "loss_last": m.get("loss_last"),
                             "max_weight_diff_vs_first": _max_diff(ref[name], w)})
                print(rows[-1], flush=True)
                # put the pipeline's own output back: every stage, at every count, trains on the same inputs
                shutil.rmtree(work / out)
                shutil.copytree(a.project / out, work / out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| stage | processes | stage wall s | Trainer runtime s | tokens/s | last loss | max weight diff vs 1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['processes']} | {r['stage_wall_s']} | {r['train_runtime_s']} | "
              f"{r['train_tokens_per_s']} | {r['loss_last']:.4f} | {r['max_weight_diff_vs_first']:.2g} |")
    write_result("multiprocess", {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
