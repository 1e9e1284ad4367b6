"""Split a study into ``n`` shards by cell hash, so ``n`` independent jobs (one per Hydra
launcher worker: joblib, SLURM, Ray) can run one study into one store with no scheduler of
their own: every cell lands in exactly one shard, whichever job runs it, and a shard's cells
are fixed by the cells themselves, not by the order or number of other cells."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from convergence.errors import ConvergenceError

if TYPE_CHECKING:  # plan imports config, which validates shards with parse_shard
    from convergence.plan import Cell

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None (no sharding) for None or ``""``."""
    if spec is None or str(spec).strip() == "":
        return None
    m = _SPEC.match(str(spec))
    if m is None:
        raise ConvergenceError(f"shard={spec!r} is not of the form i/n (e.g. shard=0/4 runs the "
                               "first of 4 shards)")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise ConvergenceError(f"shard={spec!r}: need n >= 1 and 0 <= i < n "
                               f"(shards of n={count} are 0/{count} .. {max(count - 1, 0)}/{count})")
    return index, count


def shard_of(cell_hash: str, count: int) -> int:
    """The shard a cell belongs to: its hex content hash modulo ``count``."""
    return int(cell_hash, 16) % count


def select_shard(cells: Sequence[Cell], spec: str | None) -> list[Cell]:
    """The cells of shard ``spec`` (all cells when ``spec`` is None)."""
    parsed = parse_shard(spec)
    if parsed is None:
        return list(cells)
    index, count = parsed
    return [c for c in cells if shard_of(c.hash, count) == index]
