"""Retention's decisions, worked by hand: which rounds go, which `dvc status` changes are only dropped data, which
missing outputs are not retention's and must run, and when `dvc gc --workspace` would take a registered policy."""

from __future__ import annotations

from alignloop.pipeline.retention import (missing_not_dropped, only_dropped, rounds_to_drop, stale_after_retention,
                                          unreferenced_protected)

R1, R2 = "data/rounds/r1/policy", "data/rounds/r2/policy"


def test_rounds_to_drop_keeps_the_last_n_and_every_protected_round():
    order = ["r1", "r2", "r3", "r4", "r5"]
    assert rounds_to_drop(order, 0, set(), set()) == []  # 0: keep everything
    assert rounds_to_drop(order, 2, set(), set()) == ["r1", "r2", "r3"]
    assert rounds_to_drop(order, 2, {"r1"}, set()) == ["r2", "r3"]  # the champion stays however old
    assert rounds_to_drop(order, 2, {"r1"}, {"r2"}) == ["r3"]  # already dropped: not again
    assert rounds_to_drop(order, 5, set(), set()) == []
    assert rounds_to_drop(order, 9, set(), set()) == []  # more than ran: nothing
    assert rounds_to_drop(order, 1, {"r5"}, set()) == ["r1", "r2", "r3", "r4"]  # the last is kept anyway


def test_only_missing_data_at_dropped_paths_counts_as_no_change():
    dropped = {R1}
    assert only_dropped([{"changed outs": {R1: "deleted"}}], dropped)
    assert only_dropped([{"changed deps": {R1: "not in cache"}}], dropped)
    assert not only_dropped([{"changed deps": {R1: "modified"}}], dropped)  # a changed policy is a real change
    assert not only_dropped([{"changed deps": {R2: "deleted"}}], dropped)  # not dropped: missing for another reason
    assert not only_dropped([{"changed deps": {R1: "deleted", "params.resolved.yaml": "modified"}}], dropped)
    assert not only_dropped([{"changed deps": {R1: "deleted"}}, {"changed command": True}], dropped)
    assert not only_dropped(["always changed"], dropped)


def test_stale_after_retention_keeps_only_stages_with_a_real_change():
    status = {"dpo_r1": [{"changed outs": {R1: "deleted"}}],
              "evaluate_r1": [{"changed deps": {R1: "deleted"}}],
              "generate_r2": [{"changed deps": {R1: "deleted"}}, {"changed deps": {"params.resolved.yaml": "modified"}}],
              "dpo_r2": [{"changed outs": {R2: "deleted"}}]}
    assert stale_after_retention(status, {R1}) == ["dpo_r2", "generate_r2"]
    assert stale_after_retention(status, set()) == sorted(status)  # nothing dropped: DVC's word stands


def test_missing_outputs_retention_did_not_drop_must_run_first():
    status = {"dpo_r1": [{"changed outs": {R1: "deleted"}}],
              "dpo_r2": [{"changed outs": {R2: "deleted", "data/rounds/r2/train_metrics.json": "deleted"}}],
              "evaluate_r1": [{"changed deps": {R1: "deleted"}}],  # a missing dep is its producer's business
              "pairs_r2": [{"changed outs": {"data/rounds/r2/pairs.jsonl": "modified"}}]}  # runs anyway
    assert missing_not_dropped(status, {R1}) == ["dpo_r2"]
    assert missing_not_dropped(status, {R1, R2}) == ["dpo_r2"]  # its metrics file is not retention's


def test_gc_is_refused_for_a_registered_policy_dvc_lock_no_longer_names():
    protected = {"champion (version 1, r1)": "aa.dir", "candidate (version 3, r3)": "cc.dir"}
    assert unreferenced_protected(protected, {"aa.dir", "cc.dir", "dd"}) == {}
    assert unreferenced_protected(protected, {"cc.dir"}) == {"champion (version 1, r1)": "aa.dir"}
