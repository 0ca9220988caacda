"""The resume mechanisms themselves (issue 18), each tested so that breaking it fails a test: the COMPLETE marker (an
unmarked checkpoint is never resumed from), checkpoint fingerprints (a changed setting, input or code starts afresh
and deletes the stale checkpoint), a real Trainer resumed mid-run ending with the uninterrupted weights, and
generation's batch cache (finished batches merged, temp files and other fingerprints never)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from alignloop.ml import training
from alignloop.ml.training import COMPLETE, checkpoint_dir, last_complete_checkpoint, train_resumable
from alignloop.pipeline.stages import generate


def _ckpt(root: Path, step: int, complete: bool) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"w")
    if complete:
        (d / COMPLETE).write_text(str(step))
    return d


def test_only_marked_checkpoints_count_and_the_newest_step_wins(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    _ckpt(tmp_path, 5, True)
    _ckpt(tmp_path, 9, True)
    _ckpt(tmp_path, 10, True)  # numeric order: 10 > 9 (a string sort would pick 9)
    _ckpt(tmp_path, 15, False)  # killed while the Trainer wrote it
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    (tmp_path / "checkpoint-10" / COMPLETE).unlink()
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-9"


def _params():
    section = lambda **kw: types.SimpleNamespace(model_dump=lambda **_: kw)  # noqa: E731
    return types.SimpleNamespace(model=section(name="m"), train=section(lora=False))


def test_a_checkpoint_is_keyed_by_settings_inputs_and_code_and_stale_ones_are_deleted(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data, code = tmp_path / "train.jsonl", tmp_path / "stage.py"
    data.write_text("a\n")
    code.write_text("x = 1\n")
    root = tmp_path / "ckpt"
    first = checkpoint_dir(root, "sft", _params(), {"lr": 0.1}, [str(data)], [code])
    assert checkpoint_dir(root, "sft", _params(), {"lr": 0.1}, [str(data)], [code]) == first  # same run: same place
    _ckpt(first, 5, True)
    # Each kind of change gives another fingerprint, and the old checkpoints are deleted, never resumed from.
    changes = [lambda: ({"lr": 0.2}, None), lambda: ({"lr": 0.1}, data.write_text("b\n")),
               lambda: ({"lr": 0.1}, code.write_text("x = 2\n"))]
    seen = {first}
    for change in changes:
        settings, _ = change()
        path = checkpoint_dir(root, "sft", _params(), settings, [str(data)], [code])
        assert path not in seen and path.parent == root / "sft"
        assert list((root / "sft").iterdir()) == [path]  # the previous fingerprint's folder is gone
        seen.add(path)
        _ckpt(path, 5, True)
    assert checkpoint_dir(root, "other", _params(), {"lr": 0.1}, [str(data)], [code]).parent == root / "other"
    assert (root / "sft").is_dir() and any((root / "sft").iterdir())  # another key's checkpoints are not touched


def test_a_checkpoint_written_by_another_process_count_is_refused_with_the_fix(tmp_path, monkeypatch):
    from alignloop.core.config import ConfigError

    data, code, root = tmp_path / "train.jsonl", tmp_path / "stage.py", tmp_path / "ckpt"
    data.write_text("a\n")
    code.write_text("x = 1\n")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under `accelerate launch --num_processes 2`, rank 0
    monkeypatch.setenv("RANK", "0")
    path = checkpoint_dir(root, "sft", _params(), {"lr": 0.1}, [str(data)], [code])
    assert (path / "WORLD_SIZE").read_text() == "2"
    _ckpt(path, 5, True)
    assert checkpoint_dir(root, "sft", _params(), {"lr": 0.1}, [str(data)], [code]) == path  # same count: resumes
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    with pytest.raises(ConfigError, match=r"checkpoint-5 was written by 2 training process\(es\); this run has 1.*"
                                          r"train\.processes: 2.*or delete"):
        checkpoint_dir(root, "sft", _params(), {"lr": 0.1}, [str(data)], [code])
    assert (path / "checkpoint-5" / COMPLETE).is_file()  # refused, not deleted
    # without a complete checkpoint there is nothing to resume: the new count is simply recorded
    (path / "checkpoint-5" / COMPLETE).unlink()
    assert checkpoint_dir(root, "sft", _params(), {"lr": 0.1}, [str(data)], [code]) == path
    assert (path / "WORLD_SIZE").read_text() == "1"


# --- a real Trainer, interrupted and resumed ------------------------------------------------------------------


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x, labels):
        out = self.lin(x).squeeze(-1)
        return {"loss": ((out - labels) ** 2).mean(), "logits": out}


def _trainer(out: Path, stop_at: int | None = None):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(40, 4, generator=g)
    data = [{"x": x, "labels": x.sum() * 0.5} for x in xs]
    torch.manual_seed(0)
    model = Tiny()
    args = TrainingArguments(output_dir=str(out), max_steps=10, save_steps=5, save_strategy="steps",
                             per_device_train_batch_size=4, learning_rate=0.05, logging_steps=1, report_to=[],
                             use_cpu=True, seed=0, remove_unused_columns=False,
                             disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    steps = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)
            if stop_at is not None and state.global_step == stop_at:
                raise KeyboardInterrupt  # the kill: after checkpoint-5 was written, before the end

    trainer.add_callback(Count())
    return trainer, steps


def _weights(trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def _curve(trainer) -> list[tuple[int, float]]:
    """The loss logged at every step (logging_steps=1): the resumed run's history is the checkpoint's plus its own."""
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    trainer, steps = _trainer(tmp_path_factory.mktemp("ref"))
    train_resumable(trainer, "ref")
    assert steps == list(range(1, 11))
    return _weights(trainer), _curve(trainer)


def test_a_killed_trainer_resumes_from_its_marked_checkpoint_to_the_uninterrupted_weights(tmp_path, capsys, reference):
    trainer, _ = _trainer(tmp_path, stop_at=7)
    with pytest.raises(KeyboardInterrupt):
        train_resumable(trainer, "t")
    assert (tmp_path / "checkpoint-5" / COMPLETE).read_text() == "5" and not (tmp_path / "checkpoint-10").exists()
    capsys.readouterr()
    trainer, steps = _trainer(tmp_path)
    train_resumable(trainer, "t")
    assert f"t: resuming from {tmp_path / 'checkpoint-5'}" in capsys.readouterr().out
    assert steps == [6, 7, 8, 9, 10]  # continued, not restarted
    assert torch.allclose(_weights(trainer), reference[0], atol=1e-6)
    # The whole loss curve, step by step, not only its ends: the data order and RNG came back with the checkpoint.
    curve = _curve(trainer)
    assert [s for s, _ in curve] == [s for s, _ in reference[1]] == list(range(1, 11))
    assert [v for _, v in curve] == pytest.approx([v for _, v in reference[1]], abs=1e-6)
    assert (tmp_path / "checkpoint-10" / COMPLETE).is_file()  # the last step is checkpointed too


def test_an_unmarked_checkpoint_is_not_resumed_from(tmp_path, capsys, reference):
    trainer, _ = _trainer(tmp_path, stop_at=7)
    with pytest.raises(KeyboardInterrupt):
        train_resumable(trainer, "t")
    (tmp_path / "checkpoint-5" / COMPLETE).unlink()  # as if the kill had landed while the Trainer wrote it
    (tmp_path / "checkpoint-5" / "model.safetensors").write_bytes(b"half written")
    capsys.readouterr()
    trainer, steps = _trainer(tmp_path)
    train_resumable(trainer, "t")
    assert "resuming" not in capsys.readouterr().out
    assert steps == list(range(1, 11))  # restarted from step 0, ignoring the broken folder
    assert torch.allclose(_weights(trainer), reference[0], atol=1e-6)


def test_the_marker_is_written_only_by_a_save(monkeypatch, tmp_path):
    """MarkComplete writes COMPLETE in on_save, after the Trainer has written the folder: if saving fails, no marker."""
    trainer, _ = _trainer(tmp_path)

    def broken_save(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(trainer, "_save_checkpoint", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train_resumable(trainer, "t")
    assert not list(tmp_path.glob(f"checkpoint-*/{COMPLETE}"))
    assert training.last_complete_checkpoint(tmp_path) is None


# --- generation's batch cache ---------------------------------------------------------------------------------


def _batch(b: int, end: int) -> list[dict]:
    return [{"prompt_id": f"p{i}", "sample_idx": 0, "response": f"r{i}", "num_tokens": 1} for i in range(b, end)]


def test_generation_merges_finished_batches_and_computes_only_the_missing_ones(tmp_path):
    from alignloop.core import files

    files.write_jsonl(tmp_path / "b000000-000001.jsonl", _batch(0, 1))
    files.write_jsonl(tmp_path / "b000002-000003.jsonl", _batch(2, 3))
    (tmp_path / ".b000001-000002.jsonl.tmp-x").write_text("half written")  # a kill mid-write: never merged
    computed = []

    def batches(b, end):
        computed.append(b)
        return _batch(b, end)

    rows, merged = generate._uniform(tmp_path, 4, batches)
    assert computed == [1, 3] and merged == 2
    assert [r["prompt_id"] for r in rows] == ["p0", "p1", "p2", "p3"]
    assert sorted(p.name for p in tmp_path.glob("b*.jsonl")) == [f"b00000{i}-00000{i + 1}.jsonl" for i in range(4)]
    computed.clear()
    assert generate._uniform(tmp_path, 4, batches)[1] == 4 and computed == []  # a rerun computes nothing


def test_a_generation_cache_of_other_inputs_is_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy, prompts, code = tmp_path / "policy", Path(generate.PROMPTS), tmp_path / "generate.py"
    policy.mkdir()
    (policy / "model.safetensors").write_bytes(b"w1")
    prompts.parent.mkdir(parents=True)
    prompts.write_text('{"id": "p"}\n')
    code.write_text("x\n")
    fp = lambda s=None: generate.fingerprint(str(policy), s or {"n": 4}, [code])  # noqa: E731
    first = fp()
    assert fp() == first
    assert fp({"n": 8}) != first
    (policy / "model.safetensors").write_bytes(b"w2")
    second = fp()
    assert second != first
    prompts.write_text('{"id": "q"}\n')
    assert fp() not in (first, second)
