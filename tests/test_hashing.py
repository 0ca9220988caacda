"""Hashing at model scale: a file's md5 is read once however many stages, fingerprints and the registry ask, and a
file that is a hard link into DVC's cache is not read at all (its cache entry is named by its md5).

The pass counts come from ``files.HASHED`` (bytes file_md5 read in this process)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from alignloop.core import files
from alignloop.pipeline import layout, tracking


def read_bytes_during(fn) -> int:
    before = files.HASHED["bytes"]
    fn()
    return files.HASHED["bytes"] - before


def test_file_md5_is_read_once_and_again_only_after_a_change(tmp_path):
    f, cache = tmp_path / "w.safetensors", tmp_path / "md5.sqlite"
    f.write_bytes(b"x" * 3000)
    want = hashlib.md5(b"x" * 3000).hexdigest()
    assert read_bytes_during(lambda: files.file_md5(f, cache)) == 3000
    assert read_bytes_during(lambda: files.file_md5(f, cache) == want) == 0  # remembered
    assert files.file_md5(f, cache) == want
    f.write_bytes(b"y" * 3000)  # same size, new mtime
    os.utime(f, ns=(1, 1))
    assert read_bytes_during(lambda: files.file_md5(f, cache)) == 3000
    assert files.file_md5(f, cache) == hashlib.md5(b"y" * 3000).hexdigest()
    # without a cache every call reads; a damaged cache file costs a re-hash, never a wrong answer
    assert read_bytes_during(lambda: files.file_md5(f)) == 3000
    cache.write_bytes(b"not a database")
    assert files.file_md5(f, cache) == hashlib.md5(b"y" * 3000).hexdigest()


def test_fingerprints_and_dvc_md5_share_one_read(tmp_path, monkeypatch):
    """What a round does to a policy directory: the next stage's lineage tags (dvc_md5), its checkpoint or shard
    fingerprint (hash_paths) and the registry (content_hash) — the weights are read once in all."""
    monkeypatch.chdir(tmp_path)
    policy = Path("data/rounds/r1/policy")
    policy.mkdir(parents=True)
    (policy / "model.safetensors").write_bytes(os.urandom(5000))
    (policy / "config.json").write_text("{}")
    n = read_bytes_during(lambda: (tracking.dvc_md5(policy), files.hash_paths([policy], hashlib.sha256(),
                                                                               layout.HASH_CACHE),
                                   tracking.content_hash(policy), tracking.dvc_md5(policy)))
    assert n == 5002
    # and the answer is DVC's: the md5 of the sorted {md5, relpath} listing, + ".dir"
    listing = [{"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": p.name}
               for p in sorted(policy.iterdir(), key=lambda p: p.name)]
    assert tracking.content_hash(policy) == hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def _dvc_cached(tmp_path: Path, out: str, files_: dict[str, bytes], link: bool) -> str:
    """A DVC-3-shaped cache entry for the directory ``out`` (its .dir listing and objects) and a dvc.lock naming it;
    the workspace files are hard links to the objects when ``link``, copies otherwise. Returns the .dir md5."""
    d = tmp_path / out
    d.mkdir(parents=True)
    listing = []
    for rel, data in sorted(files_.items()):
        md5 = hashlib.md5(data).hexdigest()
        obj = tmp_path / layout.DVC_CACHE / md5[:2] / md5[2:]
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        os.link(obj, d / rel) if link else (d / rel).write_bytes(data)
        listing.append({"md5": md5, "relpath": rel})
    tree = json.dumps(listing, sort_keys=True)
    md5 = hashlib.md5(tree.encode()).hexdigest() + ".dir"
    (tmp_path / layout.DVC_CACHE / md5[:2]).mkdir(parents=True, exist_ok=True)
    (tmp_path / layout.DVC_CACHE / md5[:2] / md5[2:]).write_text(tree)
    (tmp_path / "dvc.lock").write_text(json.dumps({"schema": "2.0", "stages": {
        "dpo_r1": {"cmd": "x", "outs": [{"path": out, "hash": "md5", "md5": md5}]}}}))
    (tmp_path / "dvc.yaml").write_text(json.dumps({"stages": {"generate_r2": {"cmd": "y", "deps": [out]}}}))
    return md5


@pytest.mark.parametrize("link", [True, False], ids=["hard-linked into DVC's cache", "a copy"])
def test_a_stage_start_reads_linked_weights_not_at_all_and_copies_once(tmp_path, monkeypatch, link):
    monkeypatch.chdir(tmp_path)
    weights = {"model-00001-of-00002.safetensors": os.urandom(4000), "model-00002-of-00002.safetensors": os.urandom(3000)}
    md5 = _dvc_cached(tmp_path, "data/rounds/r1/policy", weights, link)
    n = read_bytes_during(lambda: tracking.input_hashes("generate_r2"))
    assert tracking.input_hashes("generate_r2") == {"data/rounds/r1/policy": md5}  # what dvc.lock says
    assert n == (0 if link else 7000)
    assert read_bytes_during(lambda: tracking.content_hash("data/rounds/r1/policy")) == 0
    # a linked file whose cache entry does not match is read (never trusted by name alone), and so is one written
    # in place after dvc.lock (the cache entry changed with it: its name no longer says its content)
    if link:
        shard = tmp_path / "data/rounds/r1/policy/model-00001-of-00002.safetensors"
        os.utime(tmp_path / "dvc.lock", ns=(3 * 10**18, 3 * 10**18))
        os.utime(shard, ns=(4 * 10**18, 4 * 10**18))  # (an in-place write: same inode, later mtime)
        for f in (tmp_path / layout.HASH_CACHE).parent.glob("md5.sqlite*"):
            f.unlink()  # (so that the fast path is what decides)
        assert read_bytes_during(lambda: tracking.input_hashes("generate_r2")) == 4000
        (tmp_path / "data/rounds/r1/policy/model-00002-of-00002.safetensors").unlink()
        (tmp_path / "data/rounds/r1/policy/model-00002-of-00002.safetensors").write_bytes(b"retrained")
        assert read_bytes_during(lambda: tracking.input_hashes("generate_r2")) == len(b"retrained")
        assert tracking.input_hashes("generate_r2") != {"data/rounds/r1/policy": md5}
