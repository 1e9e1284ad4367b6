"""Split a study into ``n`` shards by cell hash, so ``n`` independent jobs (one per Hydra
launcher worker: joblib, SLURM, Ray) can run one study into one store with no scheduler of
their own: every cell lands in exactly one shard, whichever job runs it, and a shard's cells
are fixed by the cells themselves, not by the order or number of other cells."""

from __future__ import annotations

from collections.abc import Sequence

from convergence.config.validate import parse_shard
from convergence.run.plan import Cell

__all__ = ["parse_shard", "select_shard", "shard_of"]


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
