"""What the pipeline's machinery costs per round at model scale: hashing, DVC caching, registry, tracking, loading.

Builds a throw-away DVC project whose stages are a round's IO path — ``sft`` (writes the start policy), then
``generate_r1``, ``dpo_r1``, ``evaluate_r1``, ``register_r1`` — and runs it with the real `dvc repro`. Each stage runs
alignloop's own code around a stub of its work: the live MLflow run (which hashes the stage's inputs for its lineage
tags), the generation shard fingerprint, the training checkpoint fingerprint, the registry's content hash and
registration, and loads of every policy the real stage loads (safetensors, tensor by tensor). Training and
generation are the stubs: "training" writes new synthetic safetensors weights of the same size (sharded as
`save_pretrained` shards them); nothing is generated. Stubs live only in this script.

Per model size it reports: seconds spent hashing in alignloop's code and how many times each weight byte was hashed
there (DVC's own hash of each new output comes on top: one pass, counted in "dvc"), DVC's time (hashing and caching
the outputs, `dvc repro` bookkeeping), saving, loading, registry and MLflow, and the disk used by the workspace and
the DVC cache (hard links counted once); then per-GB costs fitted over the sizes, and a projection for 7B (15 GB of
bf16 weights) and 70B (140 GB) policies over 5 rounds.

    python bench/scale_round.py --sizes 1,4,15 --label before      # writes bench/out/scale_round-<label>.json
    python bench/scale_round.py --table bench/out/scale_round-before.json bench/out/scale_round-after.json

Loads read the files just written, so they come from the page cache: they time deserialising, not the disk.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
SHARD_GB = 1.0  # save_pretrained's default max_shard_size is 5 GB; 1 GB keeps each write's tensor small in memory
ROUND = "r1"
STAGES = {
    "sft": {"deps": [], "outs": ["data/models/sft"]},
    "generate_r1": {"deps": ["data/models/sft", "data/curated/prompts/train.jsonl"], "outs": ["data/rounds/r1/samples.jsonl"]},
    "dpo_r1": {"deps": ["data/models/sft", "data/rounds/r1/samples.jsonl"], "outs": ["data/rounds/r1/policy"]},
    "evaluate_r1": {"deps": ["data/rounds/r1/policy", "data/models/sft", "data/curated/prompts/train.jsonl"],
                    "outs": ["data/rounds/r1/eval.json"]},
    "register_r1": {"deps": ["data/rounds/r1/policy", "data/rounds/r1/eval.json"],
                    "outs": ["data/rounds/r1/registry.json"]},
}


# --- inside a stage process ---------------------------------------------------------------------------------------

class _Counted:
    """A hashlib object that adds the bytes it is fed, and the time spent, to COUNT."""

    def __init__(self, inner):
        self._inner = inner

    def update(self, data) -> None:
        self._inner.update(data)
        COUNT["hash_bytes"] += len(data)

    def __getattr__(self, name):
        return getattr(self._inner, name)


COUNT = {"hash_s": 0.0, "hash_bytes": 0}


def _timed(fn):
    """``fn`` with its wall time (reading the files included) added to COUNT["hash_s"]."""
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            COUNT["hash_s"] += time.perf_counter() - t
    return timed


def _count_hashing() -> None:
    """Route hashlib.md5/sha256 (as alignloop's modules call them: hashlib.<name>(...) at call time) via _Counted."""
    for name in ("md5", "sha256"):
        real = getattr(hashlib, name)

        def made(*args, _real=real, **kwargs):
            h = _Counted(_real(**kwargs))
            if args:
                h.update(args[0])
            return h

        setattr(hashlib, name, made)


def write_weights(out: Path, gb: float, seed: int) -> None:
    """Synthetic bf16 safetensors shards totalling ``gb`` GB, as a sharded save_pretrained writes them."""
    import torch
    from safetensors.torch import save_file

    from alignloop.core import files

    torch.manual_seed(seed)
    n = max(1, round(gb / SHARD_GB))
    per = int(gb * 1e9 / n) // 2  # bf16 elements per shard
    with files.atomic_dir(out) as tmp:
        index = {}
        for i in range(n):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            save_file({f"layers.{i}.weight": torch.empty(per, dtype=torch.bfloat16).uniform_(-1, 1)}, str(tmp / name),
                      metadata={"format": "pt"})
            index[f"layers.{i}.weight"] = name
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
        (tmp / "config.json").write_text(json.dumps({"model_type": "llama", "synthetic_gb": gb}))


def load_weights(path: Path) -> int:
    """Load every tensor of a policy (as from_pretrained does, one tensor at a time); returns bytes loaded."""
    from safetensors import safe_open

    import torch

    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                # get_tensor maps the file lazily; copying into a fresh tensor (as from_pretrained fills a model's
                # parameters) reads every byte
                t = torch.empty(st.get_slice(key).get_shape(), dtype=torch.bfloat16).copy_(st.get_tensor(key))
                total += t.numel() * t.element_size()
                del t
    return total


def stage(name: str, gb: float) -> None:
    """One stage of the simulated round, under the real live MLflow run; writes timings/<name>.json."""
    _count_hashing()
    from alignloop.core.config import Params
    from alignloop.ml import training
    from alignloop.pipeline import tracking
    from alignloop.pipeline.stages import generate

    # the hashing alignloop does, timed where it is called: the lineage tags at run start, the two fingerprints,
    # the registry's content hash (live_run, the stages and register look these names up at call time)
    tracking.input_hashes = _timed(tracking.input_hashes)
    tracking.content_hash = _timed(tracking.content_hash)
    generate.fingerprint = _timed(generate.fingerprint)
    training.checkpoint_dir = _timed(training.checkpoint_dir)

    t0 = time.perf_counter()
    times = {"save_s": 0.0, "load_s": 0.0, "registry_s": 0.0, "loads": 0}

    def load(path: str) -> None:
        t = time.perf_counter()
        load_weights(Path(path))
        times["load_s"] += time.perf_counter() - t
        times["loads"] += 1

    with tracking.live_run("scale", name, name.split("_")[0], ROUND if name != "sft" else None):
        opened = time.perf_counter() - t0 - COUNT["hash_s"]  # (its input hashing is counted as hashing)
        if name == "sft":
            t = time.perf_counter()
            write_weights(Path("data/models/sft"), gb, seed=0)
            times["save_s"] += time.perf_counter() - t
        elif name == "generate_r1":
            generate.fingerprint("data/models/sft", {"n": 4}, [])
            load("data/models/sft")
            Path("data/rounds/r1").mkdir(parents=True, exist_ok=True)
            Path("data/rounds/r1/samples.jsonl").write_text('{"prompt_id": "p0", "sample_idx": 0, "text": "x"}\n')
        elif name == "dpo_r1":
            import inspect

            from alignloop.pipeline import layout

            # as the training stages call it (the "before" code had no hash cache to pass)
            params = inspect.signature(training.checkpoint_dir.__wrapped__).parameters
            shared = {"hash_cache": layout.HASH_CACHE} if "hash_cache" in params else {}
            training.checkpoint_dir(".alignloop/ckpt", "dpo_r1", Params(), {"beta": 0.1},
                                    ["data/models/sft", "data/models/sft", "data/rounds/r1/samples.jsonl"], [], **shared)
            load("data/models/sft")  # the start policy
            load("data/models/sft")  # the reference (ref: prev is the same weights, loaded as a second model)
            t = time.perf_counter()
            write_weights(Path("data/rounds/r1/policy"), gb, seed=1)  # "training"
            times["save_s"] += time.perf_counter() - t
        elif name == "evaluate_r1":
            load("data/rounds/r1/policy")
            load("data/models/sft")  # KL to SFT and win-rates against it
            Path("data/rounds/r1/eval.json").write_text('{"gold_reward": 0.0}\n')
        elif name == "register_r1":
            from alignloop.pipeline import registry

            md5 = tracking.content_hash("data/rounds/r1/policy")
            t = time.perf_counter()
            registry.register_round(name="scale-policy", round_name=ROUND, source=str(Path("data/rounds/r1/policy").resolve()),
                                    policy_md5=md5, run_id=None, tags={}, promote=True, decision="scale bench")
            times["registry_s"] += time.perf_counter() - t
            Path("data/rounds/r1/registry.json").write_text(json.dumps({"md5": md5}) + "\n")
    times.update(COUNT, wall_s=time.perf_counter() - t0, mlflow_open_s=opened)
    Path("timings").mkdir(exist_ok=True)
    Path(f"timings/{name}.json").write_text(json.dumps(times))


# --- the driver ---------------------------------------------------------------------------------------------------

def disk_bytes(*roots: Path) -> int:
    """Bytes of the files under ``roots``, each inode once (a hard-linked cache entry is not a second copy)."""
    seen, total = set(), 0
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for n in names:
                st = os.lstat(os.path.join(dirpath, n))
                if st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += st.st_blocks * 512
    return total


def run_size(gb: float, work: Path, env: dict, cache_type: str = "", keep: bool = False) -> dict:
    """One simulated round at ``gb`` GB of weights with DVC's ``cache_type`` ('' = DVC's default, copy); the project
    is deleted afterwards unless ``keep``."""
    proj = work / f"p{gb:g}"
    shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir(parents=True)
    sh = lambda *cmd: subprocess.run(cmd, cwd=proj, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    if cache_type:
        sh("dvc", "config", "--local", "cache.type", cache_type)
    (proj / "data/curated/prompts").mkdir(parents=True)
    (proj / "data/curated/prompts/train.jsonl").write_text('{"prompt_id": "p0", "prompt": "hello"}\n')
    me = f"{sys.executable} {Path(__file__).resolve()} --stage"
    dvc_yaml = {"stages": {n: {"cmd": f"{me} {n} --gb {gb}", **{k: v for k, v in s.items() if v}}
                           for n, s in STAGES.items()}}
    (proj / "dvc.yaml").write_text(json.dumps(dvc_yaml, indent=1))
    walls = {}
    for name in STAGES:  # one `dvc repro` per stage, as the Prefect flow runs them
        t = time.perf_counter()
        sh("dvc", "repro", "--single-item", name)
        walls[name] = time.perf_counter() - t
    t = time.perf_counter()
    status = sh("dvc", "status").stdout
    status_s = time.perf_counter() - t
    timings = {n: json.loads((proj / "timings" / f"{n}.json").read_text()) for n in STAGES}
    weights = disk_bytes(proj / "data/rounds/r1/policy")
    round_stages = [n for n in STAGES if n != "sft"]
    r = {k: sum(timings[s][k] for s in round_stages) for k in
         ("hash_s", "hash_bytes", "registry_s", "load_s", "loads", "save_s", "mlflow_open_s", "wall_s")}
    r["dvc_s"] = sum(walls[s] for s in round_stages) - r["wall_s"]  # DVC's own work around the stage commands
    r["weight_passes"] = r["hash_bytes"] / weights
    # the pipeline's machinery: hashing (alignloop's), DVC's caching and bookkeeping, the registry, opening the runs
    r["machinery_s"] = r["hash_s"] + r["dvc_s"] + r["registry_s"] + r["mlflow_open_s"]
    out = {"gb": gb, "weights_bytes": weights, "cache_type": cache_type or "copy (DVC's default)",
           "round": r, "stages": timings, "dvc_repro_s": walls, "dvc_status_s": status_s,
           "up_to_date": "up to date" in status,
           "disk": {"workspace": disk_bytes(proj / "data"), "workspace_and_cache": disk_bytes(proj / "data", proj / ".dvc/cache")}}
    # per kept policy (two are kept: sft and r1): workspace + cache over the weights' own size
    out["disk"]["per_policy_x"] = out["disk"]["workspace_and_cache"] / (2 * weights)
    if not keep:
        shutil.rmtree(proj, ignore_errors=True)
    return out


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares a + b*x."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def table(results: list[dict]) -> str:
    rows = ["| run | size | DVC cache | hashing in alignloop (passes over the weights) | DVC (hash + cache + bookkeeping) "
            "| registry | MLflow runs open | saving | loading (loads) | machinery per round | disk per kept policy |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for s in res["sizes"]:
            r = s["round"]
            rows.append(f"| {res['label']} | {s['gb']:g} GB | {s['cache_type']} | {r['hash_s']:.1f} s ({r['weight_passes']:.2f}) "
                        f"| {r['dvc_s']:.1f} s | {r['registry_s']:.1f} s | {r['mlflow_open_s']:.1f} s | {r['save_s']:.1f} s "
                        f"| {r['load_s']:.1f} s ({r['loads']}) | **{r['machinery_s']:.1f} s** | {s['disk']['per_policy_x']:.2f}× |")
    rows.append("")
    rows.append("| run | machinery s/GB (fit) | 7B (15 GB) per round | 7B, 5 rounds | 70B (140 GB) per round | 70B, 5 rounds "
                "| disk, 5 rounds + SFT kept: 7B / 70B |")
    rows.append("|---|---|---|---|---|---|---|")
    for res in results:
        a, b = fit([(s["gb"], s["round"]["machinery_s"]) for s in res["sizes"]])
        x = sum(s["disk"]["per_policy_x"] for s in res["sizes"]) / len(res["sizes"])
        rows.append(f"| {res['label']} | {b:.2f} (+{a:.1f} s) | {a + 15 * b:.0f} s | {5 * (a + 15 * b) / 60:.1f} min "
                    f"| {a + 140 * b:.0f} s | {5 * (a + 140 * b) / 60:.1f} min | {6 * 15 * x:.0f} GB / {6 * 140 * x:.0f} GB |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,4,15", help="policy sizes in GB, comma-separated (default: 1,4,15)")
    ap.add_argument("--label", default="run", help="name of this run in the table, e.g. before / after")
    ap.add_argument("--cache-type", default=None, help="DVC cache.type of the simulated project (default: what this "
                    "working copy's set-up chose: `dvc config cache.type`; '' for DVC's default, copy)")
    ap.add_argument("--work", default=None, help="where the throw-away projects go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep each size's project under --work (to inspect it)")
    ap.add_argument("--table", nargs="*", help="print the table of these result files and exit")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--gb", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:
        stage(a.stage, a.gb)
        return 0
    if a.table is not None:
        print(table([json.loads(Path(p).read_text()) for p in a.table]))
        return 0
    work = Path(a.work or tempfile.mkdtemp(prefix="scale-round-"))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db", "DVC_NO_ANALYTICS": "1"}
    cache_type = a.cache_type
    if cache_type is None:
        got = subprocess.run([str(Path(bin_dir) / "dvc"), "config", "cache.type"], cwd=REPO, capture_output=True, text=True)
        cache_type = got.stdout.strip() if got.returncode == 0 else ""
    sizes = []
    for gb in (float(x) for x in a.sizes.split(",")):
        print(f"{gb:g} GB, cache.type {cache_type or 'copy (default)'} ...", flush=True)
        sizes.append(run_size(gb, work, env, cache_type, keep=a.keep))
        r = sizes[-1]["round"]
        print(f"  machinery {r['machinery_s']:.1f} s (hash {r['hash_s']:.1f} s, {r['weight_passes']:.2f} passes; "
              f"dvc {r['dvc_s']:.1f} s), disk {sizes[-1]['disk']['per_policy_x']:.2f}× per policy", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    res = {"label": a.label, "sizes": sizes, "host": os.uname().nodename}
    path = OUT / f"scale_round-{a.label}.json"
    path.write_text(json.dumps(res, indent=1))
    print(table([res]))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
