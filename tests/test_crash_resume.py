"""Kill each kind of stage mid-run with SIGKILL, rerun `dvc repro`, get what an uninterrupted run gets.

One reduced project runs `dvc repro` once without interruption: that dvc.lock is the reference. Then, per stage,
`dvc repro --force --single-item <stage>` is started in its own process group and SIGKILLed (dvc and the stage
process both) at a point where the stage has done real work: training stages after their first complete
checkpoint (the reward model: in the second member of a 2-member ensemble), generation after its first batch is
cached, evaluation while its sampling progress bar is unfinished. The trigger must fire before the stage ends.
Asserted every time:
- nothing partial is taken as complete: `dvc status` names the killed stage, and its outputs in the workspace are
  either gone or exactly the reference (never a half-written file under the output's name);
- nothing is lost: the previous (cached) outputs come back from DVC's cache with `dvc checkout`;
- rerunning the killed command resumes where the stage can (training from its last checkpoint, generation from its
  cached batches) and finishes with every cached output byte-identical to the reference; `dvc repro` then has
  nothing left to run (no stage reads the runtime fields that differ).
Metrics files differ only in wall-time fields (runtimes, tokens/s, MFU), which are excluded.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _project import init_project, kill_during, sh

PARAMS = {
    "experiment": "crash",
    "seed": 0,
    "task": {"num_prompts": 120, "sft_per_prompt": 4, "pairs_per_prompt": 4},
    "model": {"max_length": 64, "arch": {"hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                         "intermediate_size": 128, "vocab_size": 512}},
    # Small batches and frequent checkpoints: a kill lands after a checkpoint and well before the end. Checkpoints
    # on multiples of the Trainer's 5-step logging interval, so even the logged losses match (a resume mid-window
    # would log the average of the window's remaining steps only).
    # One or two epochs: the models' quality does not matter here, only that a rerun reproduces them (suite time).
    "sft": {"epochs": 2, "lr": 0.004, "batch_size": 8, "checkpoint_every": 5},
    # Two members: the kill lands in member 1, so the rerun must not retrain member 0.
    "reward_model": {"epochs": 1, "lr": 0.001, "batch_size": 8, "checkpoint_every": 5, "ensemble": 2},
    "generate": {"n": 4, "max_new_tokens": 16, "batch_size": 8},
    "dpo": {"beta": 0.3, "lr": 0.0005, "epochs": 1, "batch_size": 4, "checkpoint_every": 5},
    "evaluate": {"max_new_tokens": 16, "samples_per_prompt": 2, "kl_samples_per_prompt": 2, "temperature": 1.0},
    # An LLM judge on a slow local endpoint (tests/_judge_server.py, 50 ms an answer, one call at a time): the judging
    # stage lasts long enough to be killed part-way through its calls.
    "llm_judge": {"enabled": True, "model": "gold-judge", "api_key_env": None, "max_prompts": 8, "concurrency": 1},
    "rounds": {"r1": {"algo": "dpo", "prev": "sft"}},
}
JUDGE_CACHE = ".alignloop/llm_judge_cache/*/*.json"  # one file per verdict received


def is_timing(key: str) -> bool:
    """Fields of metrics files about this execution rather than its result — wall time, throughput, utilisation,
    tokens trained by this process (fewer after a resume): the only ones a rerun may change."""
    return key.endswith(("_s", "train_tokens")) or "per_s" in key or "mfu" in key or key == "seconds"



def complete_checkpoint(pattern: str):
    return lambda root, log: any(root.glob(f".alignloop/ckpt/{pattern}/checkpoint-*/COMPLETE"))


def cached_batch(root: Path, log: str) -> bool:
    return any(not p.name.startswith(".") for p in root.glob(".alignloop/shards/r1/*/b*.jsonl"))


def verdicts(root: Path, log: str) -> bool:
    return len(list(root.glob(JUDGE_CACHE))) >= 2


def progress(desc: str):
    """The stage's own progress bar is up and not finished (`<desc>:  37%|...`), and its final print (which starts
    with the same words, so matching the words alone could fire after the work) is not there."""
    bar = re.compile(re.escape(desc) + r":\s+(\d+)%\|")
    final = re.compile(re.escape(desc) + r": (?!\s*\d+%\|)")
    return lambda root, log: any(int(m) < 100 for m in bar.findall(log)) and not final.search(log)


class Failpoint(str):
    """Kill at a failpoint (alignloop.core.files.failpoint): the stage SIGKILLs itself half-way through writing the
    output whose path ends with this string. For stages whose work takes a fraction of a second on this project,
    where a timed kill would race the stage's end. ``temp`` globs the temporary sibling the writer was filling."""

    def __new__(cls, target: str, temp: str):
        self = super().__new__(cls, target)
        self.temp = temp
        return self


# (stage, when to kill it, what the rerun prints when it resumes instead of restarting: the stages killed at a
# failpoint do their work again from the start; register finds the version the killed run created).
CASES = [
    ("curate", Failpoint("/sft.jsonl", "data/.curated.tmp-*/.sft.jsonl.tmp-*"), None),
    ("base", Failpoint("data/models/base", "data/models/.base.tmp-*/model.safetensors"), None),
    ("score_r1", Failpoint("data/rounds/r1/scores.jsonl", "data/rounds/r1/.scores.jsonl.tmp-*"), None),
    ("pairs_r1", Failpoint("data/rounds/r1/pairs.jsonl", "data/rounds/r1/.pairs.jsonl.tmp-*"), None),
    ("register_r1", Failpoint("data/rounds/r1/registry.json", "data/rounds/r1/.registry.json.tmp-*"),
     "version 1 (existing)"),
    ("report", Failpoint("data/report/summary.json", "data/report/.summary.json.tmp-*"), None),
    ("sft", complete_checkpoint("sft/*"), "sft: resuming from"),
    ("reward_model", complete_checkpoint("reward_model/seed1/*"),
     ("reward_model seed 0: resuming from", "reward_model seed 1: resuming from")),
    ("generate_r1", cached_batch, "merged"),
    ("dpo_r1", complete_checkpoint("dpo_r1/*"), "dpo r1: resuming from"),
    ("evaluate_r1", progress("evaluate r1"), None),
    # Its cache is emptied first; the rerun asks only for the verdicts the killed run had not received.
    ("llm_judge_r1", verdicts, None),
]


def outs_of(root: Path, lock: dict, stage: str) -> dict[str, str]:
    """md5 of the stage's cached outputs (dvc.yaml `outs`) as dvc.lock records them. Its uncached metrics files are
    compared by metrics_of, without their wall-time fields."""
    declared = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage].get("outs", [])
    names = {next(iter(o)) if isinstance(o, dict) else o for o in declared}
    return {o["path"]: o["md5"] for o in lock["stages"][stage].get("outs", []) if o["path"] in names}


def uncached(root: Path, stage: str) -> set[str]:
    """Outputs declared `cache: false` (register's record): git keeps their previous version, not DVC."""
    declared = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage].get("outs", [])
    return {next(iter(o)) for o in declared if isinstance(o, dict) and next(iter(o.values())).get("cache") is False}


def status_paths(text: str) -> set[str]:
    """Paths `dvc status` lists as changed ("deleted:   data/models/sft", ...)."""
    return {line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("\t\t") and ":" in line}


def metrics_of(root: Path, lock: dict, stage: str) -> dict:
    """The stage's uncached metrics files, without wall-time fields."""
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]
    files = [next(iter(m)) if isinstance(m, dict) else m for m in dvc_yaml.get("metrics", [])]
    return {f: {k: v for k, v in json.loads((root / f).read_text()).items() if not is_timing(k)} for f in files}


@pytest.fixture(scope="module")
def judge():
    from _judge_server import GoldJudgeServer

    with GoldJudgeServer(delay_s=0.05) as server:
        yield server


@pytest.fixture(scope="module")
def project(tmp_path_factory, judge) -> Path:
    params = {**PARAMS, "llm_judge": {**PARAMS["llm_judge"], "base_url": judge.base_url}}
    root = init_project(tmp_path_factory.mktemp("crash"), params)
    sh(["dvc", "repro"], root)
    return root


def content_hash(p: Path) -> str:
    """md5 of a file, or of a directory's file names and bytes: a partial directory differs like a partial file."""
    from alignloop.core.files import hash_paths

    h = hashlib.md5()
    hash_paths([p], h)
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("stage,ready,resumed", CASES, ids=[c[0] for c in CASES])
def test_killed_stage_reruns_to_the_uninterrupted_result(project, judge, stage, ready, resumed):
    reference = yaml.safe_load((project / "dvc.lock").read_text())
    if stage.startswith("llm_judge"):
        verdicts_in_full = len(list(project.glob(JUDGE_CACHE)))
        shutil.rmtree(project / ".alignloop/llm_judge_cache")
    ref_metrics = metrics_of(project, reference, stage)
    ref_content = {path: content_hash(project / path) for path in outs_of(project, reference, stage)}
    if isinstance(ready, Failpoint):
        proc = sh(["dvc", "repro", "--force", "--single-item", stage], project, check=False,
                  env={"ALIGNLOOP_FAILPOINT": ready})
        log = proc.stdout + proc.stderr
        assert proc.returncode != 0, log[-3000:]
        assert f"failpoint {ready}: SIGKILL while writing" in log, log[-3000:]  # the kill landed where it was meant to
    else:
        kill_during(project, stage, ready)

    # Nothing partial is taken as complete: DVC sees the stage as not done, and no output holds other content.
    status = sh(["dvc", "status", stage], project).stdout
    assert stage in status, status
    for path, digest in ref_content.items():  # directories too: a half-filled model folder would differ
        p = project / path
        assert not p.exists() or content_hash(p) == digest, f"{path} is partial"
    assert yaml.safe_load((project / "dvc.lock").read_text()) == reference  # the lock still describes the old run
    if isinstance(ready, Failpoint):  # ... and it was killed in the middle of the work: its temp file holds part of it
        assert [p for p in project.glob(ready.temp) if p.stat().st_size > 0], f"no partial {ready.temp}"

    # Nothing is lost: the interrupted stage's previous outputs are in DVC's cache (its uncached metrics files are
    # tracked by git in a real project, and are rewritten by the rerun).
    cached = project.parent / f"{project.name}-{stage}-checkout"
    subprocess.run(["cp", "-a", str(project), str(cached)], check=True)
    sh(["dvc", "checkout", "--force", stage], cached)
    status = sh(["dvc", "status", stage], cached).stdout
    assert not (set(outs_of(project, reference, stage)) - uncached(project, stage)) & status_paths(status), status

    # Rerunning the killed command resumes (where the stage can) and reproduces the uninterrupted outputs byte for
    # byte. (Plain `dvc repro` would not even run the stage here: its inputs match the reference run in dvc.lock, so
    # DVC restores that run's outputs from its cache — the usual case after a kill is a stage with new inputs, which
    # `dvc repro` runs and which then resumes the same way.)
    if stage.startswith("llm_judge"):
        received, asked = len(list(project.glob(JUDGE_CACHE))), judge.requests
        assert 0 < received < verdicts_in_full, (received, verdicts_in_full)
    out = sh(["dvc", "repro", "--force", "--single-item", stage], project)
    text = out.stdout + out.stderr
    if stage.startswith("llm_judge"):  # the verdicts received before the kill are not asked for again
        assert judge.requests - asked == verdicts_in_full - received, (judge.requests - asked, verdicts_in_full, received)
    for line in (resumed,) if isinstance(resumed, str) else resumed or ():
        assert line in text, text[-3000:]
    if stage == "reward_model":  # member 0 was finished when member 1 was killed: it resumes at its last step
        m = re.search(r"reward_model seed 0: resuming from \S+checkpoint-(\d+)", text)
        member0 = text.split("reward_model seed 1:")[0]
        assert m and "{'loss': " not in member0, f"member 0 was retrained after the kill:\n{member0[-3000:]}"
        rm = json.loads((project / "data/models/rm.metrics.json").read_text())
        assert rm["train_tokens"] == 0 < rm["member1_train_tokens"]  # member 0 trained nothing, member 1 the rest
    # The killed execution's MLflow run is not left RUNNING: the rerun closed it as KILLED.
    states = [r.info.status for r in stage_runs(project, stage)]
    assert "RUNNING" not in states and "KILLED" in states and states[-1] == "FINISHED", states
    if stage.startswith("register_"):  # the killed run's version was found, not registered again
        versions = sh([sys.executable, "-c", "from alignloop.pipeline import registry; "
                       "print([v['version'] for v in registry.versions('crash-policy')])"], project).stdout
        assert versions.strip() == "['1']", versions
    # Nothing else reruns: the rerun's metrics file differs only in runtime fields, and no stage reads one (evaluate
    # reads the reward model's held-out accuracy from rm.heldout.json, which depends on the weights alone).
    out = sh(["dvc", "repro"], project).stdout
    assert "Running stage" not in out, out
    after = yaml.safe_load((project / "dvc.lock").read_text())
    for s in reference["stages"]:
        assert outs_of(project, after, s) == outs_of(project, reference, s), f"{s}'s outputs differ after the killed {stage} was rerun"
    assert metrics_of(project, after, stage) == ref_metrics
    assert not list(project.glob(".alignloop/ckpt/*/*")), "checkpoints are deleted once the output is saved"
    if isinstance(ready, Failpoint):  # the rerun's writer removed what the killed one left
        assert not list(project.glob(ready.temp)), f"{ready.temp} left behind"


def stage_runs(root: Path, stage: str) -> list:
    """The MLflow runs of ``stage`` in the project's store, oldest first."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name(PARAMS["experiment"])
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.dvc_stage = '{stage}'", max_results=1000)
    return sorted(runs, key=lambda r: r.info.start_time)


@pytest.mark.slow
def test_every_stage_run_is_tagged_with_the_inputs_dvc_lock_records(project):
    """Each stage's latest run carries, as `dvc_dep.<path>`, the DVC md5 of every input it read — computed when the
    stage started, equal to what DVC wrote into dvc.lock after it exited (not the previous execution's entry)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    checked = 0
    for stage, entry in lock.items():
        if stage == "resolve":  # renders params for the others; opens no run
            continue
        finished = [r for r in stage_runs(project, stage) if r.info.status == "FINISHED"]
        assert finished, f"no finished run of {stage}"
        tags = {k[len("dvc_dep."):]: v for k, v in finished[-1].data.tags.items() if k.startswith("dvc_dep.")}
        assert tags == {d["path"]: d["md5"] for d in entry["deps"]}, stage
        checked += 1
    assert checked >= 12
