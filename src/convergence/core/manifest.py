"""The store's record of what its own writers wrote, so edits and foreign files show.

The checksums of a cell's files live in the cell's row; a row edited together with its
file (or a part file dropped into ``parts/`` by hand) would pass them. ``manifest.jsonl``
is an append-only log the writers keep under the store's lock: before a writer renames a
part file into place it appends one line naming the part and the digest of every row in
it (:func:`row_digest`). A reader accepts a part only if the manifest names it, and a row
only if its digest is recorded. Lines are only ever added (a cell recomputed later adds
its new row's digest; the old one stays), so a reader racing a compaction never sees a
row it cannot account for. It detects edits made without the tool, not a forger who
also rewrites the manifest: :func:`study_digest` is the number to cite and compare.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MANIFEST = "manifest.jsonl"
#: the per-file checksum columns, in the order the study digest hashes them
DIGEST_COLUMNS = ("image_sha256", "sample_sha256", "decoded_sha256")


def _plain(v):
    """A row value as the digest sees it: numpy scalars as Python ones, integral floats as
    ints (a column gains NaN, and turns float, when frames of different writers meet), and
    missing values (None, NaN, "") as absent."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def row_digest(row: dict) -> str:
    """sha256 of the row's present fields as sorted-key JSON (see :func:`_plain`)."""
    plain = {k: p for k, v in row.items() if (p := _plain(v)) is not None}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def leaf(row: dict) -> str:
    """One cell's leaf of the study digest: sha256 of its cell hash and its files'
    checksums, tab-separated (a missing checksum is the empty string)."""
    text = "\t".join([str(row["hash"]), *(str(_plain(row.get(c)) or "") for c in DIGEST_COLUMNS)])
    return hashlib.sha256(text.encode()).hexdigest()


def study_digest(rows: Iterable[dict]) -> str:
    """Merkle root over the leaves of every cell, sorted by cell hash: each level hashes
    the concatenated raw 32-byte digests of neighbouring pairs, an odd last node is carried
    up unchanged; no cells: sha256 of nothing. docs/store.md shows how to recompute it."""
    level = [bytes.fromhex(leaf(r)) for r in sorted(rows, key=lambda r: str(r["hash"]))]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        nxt = [hashlib.sha256(level[i] + level[i + 1]).digest()
               for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


@dataclass
class Manifest:
    """What the manifest records: part files and row digests (``present`` False: the
    store predates manifests, so nothing can be checked against one)."""

    present: bool = False
    parts: set[str] = field(default_factory=set)
    rows: set[str] = field(default_factory=set)


def read_manifest(root: Path) -> Manifest:
    """The manifest of the store at ``root``; an unparsable line (a writer killed while
    appending it) records nothing, so its part reads as foreign and its cells are recomputed."""
    path = Path(root) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Manifest()
    m = Manifest(present=True)
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            m.parts.update(entry.get("parts", []))
            m.rows.update(entry.get("rows", []))
    return m


def append_manifest(root: Path, parts: list[str], rows: list[str]) -> None:
    """Add one line (call under the store's lock); fsynced before the part it names is
    renamed into place, so a part on disk is always recorded first."""
    path = Path(root) / MANIFEST
    line = json.dumps({"parts": parts, "rows": rows}) + "\n"
    with open(path, "ab") as f:
        if f.tell() and _last_byte(path) != b"\n":
            line = "\n" + line  # a killed writer's partial line stays on a line of its own
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)
