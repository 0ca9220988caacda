"""Shard arithmetic (alignloop.core.shards): ranges that tile the units, and merge plans over a shard cache."""

from __future__ import annotations

import pytest

from alignloop.core.shards import cached_ranges, parse_shard, plan_merge, shard_file, shard_range


def test_shard_ranges_tile_the_units_in_order_and_balance():
    assert [shard_range(10, i, 3) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [shard_range(2, i, 4) for i in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]  # more shards than units
    for n in range(0, 30):
        for k in range(1, 7):
            ranges = [shard_range(n, i, k) for i in range(k)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [e - s for s, e in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_parse_shard_accepts_i_of_k_and_refuses_the_rest():
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(SystemExit, match="expected I/K"):
            parse_shard(bad)


def test_plan_merge_uses_cached_runs_and_fills_each_gap_with_one_computed_run():
    # cached [0,3) and [5,7) of 10 units: compute [3,5) and [7,10) once each
    assert plan_merge({0: 3, 5: 7}, 10) == [(0, 3, True), (3, 5, False), (5, 7, True), (7, 10, False)]
    assert plan_merge({}, 4) == [(0, 4, False)]
    assert plan_merge({}, 0) == []
    # a cached range that starts inside a run already taken is not used (it would duplicate units 2..3)
    assert plan_merge({0: 3, 2: 6}, 6) == [(0, 3, True), (3, 6, False)]
    # empty shards (more shards than units) are skipped, not looped on
    assert plan_merge({0: 0, 1: 1, 0 + 1: 2}, 2) == [(0, 1, False), (1, 2, True)]


def test_cached_ranges_reads_names_and_skips_hidden_temp_files(tmp_path):
    shard_file(tmp_path, 0, 2).write_text("")
    shard_file(tmp_path, 2, 5).write_text("")
    shard_file(tmp_path, 2, 2).write_text("")  # an empty shard (more shards than units) covers nothing
    (tmp_path / ".b000005-000007.jsonl.tmp").write_text("")
    assert {s: e for s, (e, _) in cached_ranges(tmp_path).items()} == {0: 2, 2: 5}
    assert cached_ranges(tmp_path / "missing") == {}
