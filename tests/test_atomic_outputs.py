"""Every stage output is written into a temporary sibling and renamed into place (alignloop.core.files.atomic_dir /
atomic_file / write_json / write_jsonl), so a failed or killed stage never leaves a partial output, and a stage that
fails leaves the previous good output untouched.

The atomic primitives are tested in test_io.py; crash behaviour through DVC in test_crash_resume.py. This module
checks the stages' source keeps to them (a new stage writing with plain ``open(..., "w")`` fails here) and that a
stage failing late leaves its previous output as it was.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WRITERS = {"save_pretrained", "savefig", "save", "write_text", "write_bytes", "save_file"}
# Writes that are not stage outputs: the checkpoint's completion marker is written after the checkpoint is
# complete, and only its existence is read.
ALLOWED = {("alignloop/ml/training.py", "write_text")}


def _atomic_blocks(tree: ast.AST) -> list[tuple[int, int]]:
    blocks = []
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                name = getattr(call, "func", None)
                name = getattr(name, "attr", None) or getattr(name, "id", None)
                if name in ("atomic_dir", "atomic_file"):
                    blocks.append((node.lineno, node.end_lineno))
    return blocks


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    blocks = _atomic_blocks(tree)
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = getattr(func, "attr", None) or getattr(func, "id", None)
        inside = any(a <= node.lineno <= b for a, b in blocks)
        if name == "open" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and \
                any(m in str(node.args[1].value) for m in "wax"):
            out.append(f"{rel}:{node.lineno}: open(..., {node.args[1].value!r})")
        elif name in WRITERS and not inside and (rel, name) not in ALLOWED:
            if name == "save" and getattr(getattr(func, "value", None), "id", None) != "torch":
                continue
            out.append(f"{rel}:{node.lineno}: {name}() outside an atomic_dir/atomic_file block")
    return out


def test_stages_write_outputs_only_through_the_atomic_helpers():
    files = sorted((ROOT / "alignloop" / "pipeline" / "stages").glob("*.py")) + [ROOT / "alignloop" / "ml" / "ppo.py",
                                                                              ROOT / "alignloop" / "ml" / "training.py"]
    offences = [o for f in files for o in _offences(f)]
    assert not offences, "\n".join(offences)


def test_the_checker_catches_a_plain_write(tmp_path):
    bad = tmp_path / "stage.py"
    bad.write_text("def run(model, out):\n    model.save_pretrained(out)\n    open(out, 'w').write('x')\n"
                   "    with files.atomic_dir(out) as tmp:\n        model.save_pretrained(tmp)\n")
    assert len(_offences(bad)) == 2


def test_a_stage_failing_after_reading_its_inputs_leaves_the_previous_output_untouched(tmp_path, monkeypatch, capsys):
    """The pairs stage fails (no usable pair) after reading everything, before writing: its previous pairs.jsonl stays
    as it was. (A failure in the middle of writing: the next test.)"""
    import json

    import yaml

    from alignloop.pipeline.stages import pairs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"rounds": {"r1": {"algo": "dpo", "prev": "sft"}},
                                                          "pairs": {"min_margin": 100.0}}))
    rounds = tmp_path / "data/rounds/r1"
    rounds.mkdir(parents=True)
    samples = [{"prompt_id": "p1", "sample_idx": i, "prompt": "q", "response": f"a{i}", "num_tokens": 1,
                "finish_reason": "stop", "seed": 0} for i in range(2)]
    (rounds / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
    (rounds / "scores.jsonl").write_text("".join(json.dumps({"prompt_id": "p1", "sample_idx": i, "reward": float(i)}) + "\n"
                                                 for i in range(2)))
    previous = b'{"id": "old", "prompt": "q", "chosen": "a1", "rejected": "a0"}\n'
    (rounds / "pairs.jsonl").write_bytes(previous)
    assert pairs.main(["--round", "r1"]) == 2
    assert "min_margin" in capsys.readouterr().err
    assert (rounds / "pairs.jsonl").read_bytes() == previous
    assert not [p for p in rounds.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_a_save_failing_half_way_through_leaves_the_previous_model_untouched(tmp_path):
    """save_trained, the save every training stage ends with, fails after the weights are written and before the
    tokenizer is (a full disk): the previous model directory is as it was and no partial one is left."""
    import types

    from transformers import LlamaConfig, LlamaForCausalLM

    from alignloop.ml.training import save_trained

    out = tmp_path / "sft"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"previous good weights")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    written = []

    class FullDisk:
        def save_pretrained(self, path):
            written.extend(p.name for p in Path(path).iterdir())  # the weights are already there
            raise OSError(28, "No space left on device")

    trainer = types.SimpleNamespace(model=model, is_fsdp_enabled=False, is_world_process_zero=lambda: True,
                                    args=types.SimpleNamespace(world_size=1), accelerator=None)
    with pytest.raises(OSError, match="No space left"):
        save_trained(trainer, FullDisk(), str(out))
    assert "model.safetensors" in written  # the failure did land mid-write
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"previous good weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]  # the temporary sibling is gone


@pytest.mark.parametrize("helper", ["atomic_dir", "atomic_file"])
def test_killed_writer_leaves_only_a_hidden_temp_sibling(tmp_path, helper):
    """What a SIGKILL mid-write leaves: the final name untouched, the partial data under a hidden temp name that
    no reader globs (DVC outputs are named paths; shard and checkpoint readers skip dot-names)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    final = tmp_path / ("out_dir" if helper == "atomic_dir" else "out.jsonl")
    final.write_text("previous") if helper == "atomic_file" else final.mkdir()
    code = (f"import time\nfrom alignloop.core import files\n"
            + (f"with files.atomic_dir({str(final)!r}) as t:\n    (t / 'part').write_text('x')\n    time.sleep(60)\n"
               if helper == "atomic_dir" else
               f"with files.atomic_file({str(final)!r}) as fh:\n    fh.write('partial')\n    fh.flush()\n    time.sleep(60)\n"))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)

    def partial() -> bool:  # the writer's data is in its temp sibling: it is mid-write
        for p in tmp_path.iterdir():
            if p.name.startswith("."):
                target = p / "part" if p.is_dir() else p
                if target.is_file() and target.read_text() in ("x", "partial"):
                    return True
        return False

    deadline = time.time() + 60
    while not partial() and time.time() < deadline:
        time.sleep(0.05)
    assert partial() and proc.poll() is None, "the writer was not alive and mid-write when it was killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if helper == "atomic_file":
        assert final.read_text() == "previous"
    else:
        assert final.is_dir() and not list(final.iterdir())
    assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p != final)
    # The next write of the same output removes what the killed writer left; a live writer's temp file stays.
    live = tmp_path / f".{final.name}.tmp-{os.getpid()}-live"
    live.write_text("a live writer's")
    with getattr(__import__("alignloop.core.files", fromlist=["x"]), helper)(final) as t:
        (t / "new").write_text("y") if helper == "atomic_dir" else t.write("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, live.name])


@pytest.mark.parametrize("writer,target", [("write_jsonl", "out.jsonl"), ("write_json", "out.json"),
                                           ("atomic_dir", "model")])
def test_the_failpoint_kills_the_writer_mid_write(tmp_path, writer, target):
    """ALIGNLOOP_FAILPOINT=<path suffix> SIGKILLs the writing process in the middle of that output (the crash tests'
    kill for stages too short to time a kill): one row / half the JSON in the temp sibling, the final name
    untouched. Other outputs are written normally."""
    import json
    import os
    import signal
    import subprocess
    import sys

    final = tmp_path / target
    body = {"write_jsonl": f"files.write_jsonl(final, [{{'id': i}} for i in range(5)])",
            "write_json": "files.write_json(final, {'a': list(range(20)), 'b': 'x'})",
            "atomic_dir": "with files.atomic_dir(final) as t:\n    (t / 'w.safetensors').write_bytes(b'w')"}[writer]
    code = (f"from pathlib import Path\nfrom alignloop.core import files\n"
            f"files.write_json(Path({str(tmp_path)!r}) / 'other.json', {{'ok': 1}})\n"
            f"final = Path({str(final)!r})\n{body}\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "ALIGNLOOP_FAILPOINT": f"{tmp_path.name}/{target}"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert f"failpoint {tmp_path.name}/{target}: SIGKILL while writing" in proc.stderr
    assert not final.exists() and (tmp_path / "other.json").exists()
    (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(f".{target}.tmp-")]
    if writer == "write_jsonl":
        assert tmp.read_text() == '{"id": 0}\n'
    elif writer == "write_json":
        whole = json.dumps({"a": list(range(20)), "b": "x"}, indent=2, sort_keys=True) + "\n"
        assert tmp.read_text() == whole[: len(whole) // 2]  # half of it
    else:
        assert [p.name for p in tmp.iterdir()] == ["w.safetensors"]
