"""Seeds of rounds: derived from the global seed and the round's *name*, never its position, so adding, inserting or
reordering rounds leaves every other round's samples, pairs and training byte-identical."""

from __future__ import annotations

import hashlib


def round_seed(seed: int, round_name: str) -> int:
    """A seed in [0, 2**31) for round ``round_name`` under global ``seed``: the first 4 bytes of
    sha256("<seed>/<round_name>"), top bit cleared (samplers add batch and wave offsets to it)."""
    digest = hashlib.sha256(f"{seed}/{round_name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
