"""The results store of one study: a table of cells plus one PNG and one float sample
per cell (and, for models whose sample is a latent, the VAE-decoded float image), addressed
by the cell's content hash.

The table is the union of ``cells.parquet`` (compacted rows) and ``parts/*.parquet``:
every writer appends its own part files and never rewrites another's, so several runs
(or shards on a shared file system) can fill one study at once. Readers take the union,
the newest row per cell hash winning; ``compact`` folds the parts into ``cells.parquet``
under a lock. Every file is written to a temporary name and renamed into place, so a
killed writer never leaves a half-written file behind a real name.

Each row records the sha256 of its image, of its float sample and of its decoded image
(where it has one); a file that is missing, unreadable or does not match is a *damaged* cell: ``run`` recomputes it,
``analyze`` and ``report`` name it, ``convergence verify`` lists it. So is a row that is not
the one its writer recorded in ``manifest.jsonl`` (core/manifest.py: edited after it was
stored) or whose fields do not give its cell hash (the hook :func:`register_row_check`).
A part file the manifest does not name (foreign) or that cannot be read is set aside in
``quarantine/`` with one line saying so; only the cells that lived in it alone are then
missing (``run`` recomputes them). A read-only Store (``verify``) only reports them.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from convergence.core.atomic import HOST, atomic_write_bytes, clean_stale
from convergence.core.errors import ConvergenceError
from convergence.core.leases import Leases
from convergence.core.manifest import (
    MANIFEST,
    Manifest,
    append_manifest,
    read_manifest,
    row_digest,
)

__all__ = ["Store", "atomic_write_bytes", "TABLE", "PARTS"]

TABLE = "cells.parquet"
PARTS = "parts"
#: the folder of the writers' leases on cells (core/leases.py)
LEASES_DIR = "claims"
#: where unreadable and foreign part files are set aside
QUARANTINE = "quarantine"
#: columns of the per-file checksums
CHECKSUMS = {"image": "image_sha256", "sample": "sample_sha256", "decoded": "decoded_sha256"}
#: what each kind of per-cell file is called in messages
LABELS = {"image": "image", "sample": "float sample", "decoded": "decoded float image"}
#: dtype of the stored decoded images. float32, not float16: float16 halves the disk
#: (a 512x512 image is 3 MB in float32) but rounds values in [0.5, 1) by up to 2^-12 =
#: 2.4e-4 (1/16 of an 8-bit level; tests/integration/test_decoded_images.py measures it), which the
#: decoded image exists to avoid: distances below one 8-bit level must stay measurable
DECODED_DTYPE = np.float32


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: ``row -> bool``: whether a row's fields give its cell hash (registered by run/plan.py,
#: which owns the hash; None: rows are not re-hashed)
_ROW_CHECK: Callable[[dict], bool] | None = None


def register_row_check(check: Callable[[dict], bool]) -> None:
    """Install the check that re-hashes a row's fields (the store sits below the plan)."""
    global _ROW_CHECK
    _ROW_CHECK = check


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ConvergenceError(
            f"the results table {path} is corrupt or unreadable ({type(e).__name__}); "
            "it was left untouched: move it away (its cells are then recomputed)") from None


def _digests(df: pd.DataFrame) -> list[str]:
    return [row_digest(r) for r in df.to_dict("records")]


def _why(e: ConvergenceError) -> str:
    """The reason inside a :func:`_read_parquet` message (its exception type)."""
    text = str(e)
    return text[text.find("(") + 1:text.find(")")] if "(" in text else text


class Store:
    def __init__(self, root: Path | str, read_only: bool = False):
        self.root = Path(root)
        #: never write (``verify``): bad part files are reported, not set aside
        self.read_only = read_only
        self.table_path = self.root / TABLE
        self.parts_dir = self.root / PARTS
        self._parts: dict[str, pd.DataFrame] = {}      # part files never change once written
        self._digests: dict[str, list[str]] = {}       # row digests of each part, in row order
        self._base: tuple[tuple, pd.DataFrame, list[str]] | None = None
        self._manifest = Manifest()
        self._lock_depth = 0
        self._lock_owner: int | None = None
        #: part files not read: name -> why (unreadable, or not named by the manifest)
        self.bad_parts: dict[str, str] = {}
        #: cells whose winning row the manifest does not record (edited after it was stored)
        self.unrecorded: set[str] = set()
        self._rows: dict[str, dict] = {}
        self._sha_cache: dict[Path, tuple[int, int, str]] = {}
        self._seq = 0
        #: damaged cells found by the last :meth:`done_hashes`: hash -> problem
        self.damaged: dict[str, str] = {}

    # -- paths ----------------------------------------------------------------------
    def image_path(self, cell_hash: str) -> Path:
        return self.root / "images" / f"{cell_hash}.png"

    def sample_path(self, cell_hash: str) -> Path:
        return self.root / "samples" / f"{cell_hash}.npz"

    def decoded_path(self, cell_hash: str) -> Path:
        return self.root / "decoded" / f"{cell_hash}.npy"

    def has_decoded(self, cell_hash: str) -> bool:
        """Whether the cell's row records a decoded float image (latent models, stored by
        a runner that records them; the analytic model's sample already is its image)."""
        if cell_hash not in self._rows:
            self.load()
        v = self._rows.get(cell_hash, {}).get("decoded")
        return isinstance(v, str) and bool(v)

    def files(self, cell_hash: str) -> list[tuple[str, Path]]:
        """(kind, path) of every file the cell's row records."""
        out = [("image", self.image_path(cell_hash)), ("sample", self.sample_path(cell_hash))]
        if self.has_decoded(cell_hash):
            out.append(("decoded", self.decoded_path(cell_hash)))
        return out

    def exists(self) -> bool:
        """Whether any rows were ever stored here."""
        return self.table_path.exists() or any(self._part_names())

    def changed_at(self) -> float:
        """mtime of the newest table file (what an analysis must be newer than)."""
        files = [self.table_path, *(self.parts_dir / n for n in self._part_names())]
        return max((p.stat().st_mtime for p in files if p.exists()), default=0.0)

    # -- table ----------------------------------------------------------------------
    def _part_names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.parts_dir)
                          if n.endswith(".parquet") and not n.startswith("."))
        except FileNotFoundError:
            return []

    def _read_base(self) -> pd.DataFrame:
        try:
            st = self.table_path.stat()
        except FileNotFoundError:
            return pd.DataFrame()
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._base is None or self._base[0] != key:
            df = _read_parquet(self.table_path)
            self._base = (key, df, _digests(df))
        return self._base[1]

    def _frames(self) -> list[pd.DataFrame]:
        """The compacted table and every accepted part file, the non-empty ones (each part
        is read once: part files never change).

        Parts are listed before the compacted table and the manifest are read; a part that
        vanished in between was folded into a newer table by ``compact``, so the read is
        retried. Parts the manifest does not name or that cannot be read are left out
        (and, unless read-only, set aside: :meth:`_set_aside`)."""
        return [f for _, f in self._named_frames()]

    def _named_frames(self) -> list[tuple[str, pd.DataFrame]]:
        for _ in range(20):
            names = self._part_names()
            base = self._read_base()
            self._manifest = read_manifest(self.root)
            frames, vanished, bad, foreign = [(TABLE, base)], False, {}, set()
            for n in names:
                if self._manifest.present and n not in self._manifest.parts:
                    bad[n] = (f"part file {PARTS}/{n} was not written by this study's writers "
                              f"(no line of {MANIFEST} names it)")
                    foreign.add(n)
                    continue
                if n not in self._parts:
                    try:
                        df = _read_parquet(self.parts_dir / n)
                    except FileNotFoundError:
                        vanished = True
                        break
                    except ConvergenceError as e:
                        bad[n] = f"part file {PARTS}/{n} is unreadable ({_why(e)})"
                        continue
                    self._parts[n], self._digests[n] = df, _digests(df)
                frames.append((n, self._parts[n]))
            if not vanished:
                break
        self._parts = {n: self._parts[n] for n in names if n in self._parts}
        self.bad_parts = bad
        if bad and not self.read_only:
            self._set_aside(bad, foreign)
        return [(n, f) for n, f in frames if not f.empty]

    def _set_aside(self, bad: dict[str, str], foreign: set[str]) -> None:
        """Move unreadable and foreign part files to ``quarantine/``, one line each.
        Under the lock, re-checked there: a compaction may have just folded a part the
        reader listed (its manifest line is then read again, and it is not moved)."""
        with self.lock():
            manifest = read_manifest(self.root)
            for n, why in bad.items():
                src = self.parts_dir / n
                if not src.exists() or (n in foreign and n in manifest.parts):
                    continue
                dest = self.root / QUARANTINE / n
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    dest = dest.with_name(f"{time.time_ns()}-{n}")
                os.replace(src, dest)
                print(f"warning: {why}; moved it to {dest.relative_to(self.root)}: the other "
                      "cells are used, `convergence run` recomputes any that lived only there",
                      file=sys.stderr)

    def raw_rows(self) -> pd.DataFrame:
        """Every accepted row of the compacted table and the parts, duplicates kept."""
        frames = self._frames()
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def load(self) -> pd.DataFrame:
        """All stored rows, one per cell hash (empty frame if nothing is stored yet)."""
        named = self._named_frames()
        if not named:
            self._rows, self.unrecorded = {}, set()
            return pd.DataFrame()
        frames = [f for _, f in named]
        digests = [d for n, _ in named for d in self._frame_digests(n)]
        df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        keep = ~df["hash"].duplicated(keep="last").to_numpy()
        df = df[keep].reset_index(drop=True)
        self._rows = {r["hash"]: r for r in df.to_dict("records")}
        kept = [d for d, k in zip(digests, keep, strict=True) if k]
        self.unrecorded = ({h for h, d in zip(df["hash"], kept, strict=True)
                            if d not in self._manifest.rows}
                           if self._manifest.present else set())
        return df

    def _frame_digests(self, name: str) -> list[str]:
        return self._base[2] if name == TABLE and self._base else self._digests[name]

    def row_hashes(self) -> set[str]:
        """Hashes with a row (files not checked: cheap, for writers polling each other
        before each claim, so the rows are not built)."""
        return set().union(*(f["hash"] for f in self._frames()))

    def append_rows(self, rows: list[dict]) -> None:
        """Store rows as a new part file of this writer (a re-run cell's newer row wins).
        The manifest names the part and its rows' digests before the part is in place."""
        if not rows:
            return
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}@{HOST}-{self._seq:05d}.parquet"
        buf = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buf, index=False)
        # read back here, as a reader would read the file: a writer polling its own store
        # before each claim (row_hashes) then reads only other writers' parts; the digests
        # are those of the rows as read back
        df = pd.read_parquet(io.BytesIO(buf.getvalue()))
        digests = _digests(df)
        with self.lock():
            self._adopt()
            append_manifest(self.root, [name], digests)
        atomic_write_bytes(self.parts_dir / name, buf.getvalue())
        self._parts[name], self._digests[name] = df, digests

    def _adopt(self) -> None:
        """Give a store written before manifests one (under the lock): its current parts
        and rows, trusted as they are (``verify`` said so until now)."""
        if (self.root / MANIFEST).exists():
            return
        names = self._part_names()
        digests = _digests(self._read_base())
        for n in names:
            try:
                digests += _digests(_read_parquet(self.parts_dir / n))
            except (FileNotFoundError, ConvergenceError):
                pass  # named all the same: an unreadable one is then set aside as unreadable
        append_manifest(self.root, names, digests)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The store's exclusive lock (compaction, claims, the manifest and records);
        re-entrant within one Store (a reader setting a part aside inside a claim)."""
        if self._lock_depth and self._lock_owner == threading.get_ident():
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # other threads' own descriptors wait here too
            self._lock_owner, self._lock_depth = threading.get_ident(), 1
            try:
                yield
            finally:
                self._lock_owner, self._lock_depth = None, 0
                fcntl.flock(f, fcntl.LOCK_UN)

    def compact(self) -> tuple[int, int]:
        """Fold the part files into ``cells.parquet`` (atomically, under the lock);
        returns (rows, parts folded). A crash at any point loses nothing: parts are only
        deleted once the table that holds their rows is in place. Foreign and unreadable
        parts are set aside first; rows the manifest does not record (edited) are left
        out, so ``run`` recomputes their cells."""
        with self.lock():
            self._adopt()
            df = self.load()
            # only the parts this load read: a writer appends its manifest line under the
            # lock but renames its part into place after it, so a listing taken now may
            # name a part whose rows are not in ``df`` (deleting it would lose them)
            names = list(self._parts)
            if not names and not self.unrecorded:
                return len(df), 0
            if self.unrecorded:
                df = df[~df["hash"].isin(self.unrecorded)].reset_index(drop=True)
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            new = [d for d in _digests(pd.read_parquet(io.BytesIO(buf.getvalue())))
                   if d not in self._manifest.rows]
            if new:  # the rows' values as the table stores them (dtypes may have widened)
                append_manifest(self.root, [], new)
            atomic_write_bytes(self.table_path, buf.getvalue())
            for n in names:
                (self.parts_dir / n).unlink(missing_ok=True)
            return len(df), len(names)

    def leases(self, ttl: float) -> Leases:
        """Claims on cells of this store, for one writer (see :mod:`convergence.core.leases`)."""
        return Leases(self.root / LEASES_DIR, self.lock, ttl)

    def clean_stale(self) -> int:
        """Remove temporary files killed writers left behind (live writers' are kept)."""
        return clean_stale(self.root)

    # -- integrity ------------------------------------------------------------------
    def _file_sha(self, path: Path) -> str:
        st = path.stat()
        hit = self._sha_cache.get(path)
        if hit and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2]
        sha = sha256_bytes(path.read_bytes())
        self._sha_cache[path] = (st.st_size, st.st_mtime_ns, sha)
        return sha

    def _expected(self, cell_hash: str, kind: str) -> str | None:
        if cell_hash not in self._rows:
            self.load()
        v = self._rows.get(cell_hash, {}).get(CHECKSUMS[kind])
        return v if isinstance(v, str) and v else None

    def problem(self, cell_hash: str) -> str | None:
        """What is wrong with a stored cell's files (None if all are intact)."""
        loaders = {"image": self.load_image, "sample": self.load_sample,
                   "decoded": self.load_decoded}
        if cell_hash in self.unrecorded:
            return (f"its row is not the one its writer recorded in {MANIFEST} (edited after it "
                    "was stored)")
        if _ROW_CHECK is not None and cell_hash in self._rows and not _ROW_CHECK(self._rows[cell_hash]):
            return "its row's fields do not give its cell hash (the row was edited)"
        for kind, path in self.files(cell_hash):
            rel = path.relative_to(self.root)
            if not path.exists():
                return f"{LABELS[kind]} {rel} is missing"
            want = self._expected(cell_hash, kind)
            try:
                if want is not None:
                    if self._file_sha(path) != want:
                        return f"{LABELS[kind]} {rel} does not match its sha256 (damaged or replaced)"
                else:  # rows of older versions carry no checksum: check it decodes
                    loaders[kind](cell_hash)
            except (OSError, ConvergenceError) as e:
                return f"{LABELS[kind]} {rel} is unreadable ({e})"
        return None

    def problems(self) -> dict[str, str]:
        """Every stored cell whose files are missing, unreadable or do not match."""
        self.load()
        found = {}
        for h in list(self._rows):
            p = self.problem(h)
            if p is not None:
                found[h] = p
        return found

    def done_hashes(self) -> set[str]:
        """Hashes of cells whose row exists and whose files are intact
        (the damaged ones are in ``self.damaged``)."""
        self.damaged = self.problems()
        return set(self._rows) - set(self.damaged)

    def describe(self, cell_hash: str) -> str:
        r = self._rows.get(cell_hash, {})
        keys = ("sampler", "schedule", "steps", "seed", "topic", "cfg")
        return f"cell {cell_hash} (" + ", ".join(f"{k}={r[k]}" for k in keys if k in r) + ")"

    # -- per-cell files -------------------------------------------------------------
    def write_image(self, cell_hash: str, image: np.ndarray) -> dict:
        """Store a cell's PNG; returns the row fields that record it (its sha256)."""
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        data = buf.getvalue()
        atomic_write_bytes(self.image_path(cell_hash), data)
        return {"image": str(self.image_path(cell_hash).relative_to(self.root)),
                CHECKSUMS["image"]: sha256_bytes(data)}

    def write_sample(self, cell_hash: str, sample: np.ndarray) -> dict:
        """Store a cell's float sample; returns the row fields that record it."""
        buf = io.BytesIO()
        # uncompressed: float mantissas hardly compress (the analytic model's float32
        # samples deflate to 0.90 of their size, at ~1.4 ms of CPU per cell: docs/batching.md)
        np.savez(buf, sample=sample)
        data = buf.getvalue()
        atomic_write_bytes(self.sample_path(cell_hash), data)
        return {"sample": str(self.sample_path(cell_hash).relative_to(self.root)),
                CHECKSUMS["sample"]: sha256_bytes(data)}

    def write_decoded(self, cell_hash: str, image: np.ndarray | None) -> dict:
        """Store a cell's decoded float image ((H, W, 3) in the model's display range,
        before 8-bit rounding; uncompressed .npy: float mantissas hardly compress), or
        record that it has none (``image`` None: the sample is the image)."""
        if image is None:
            return {"decoded": "", CHECKSUMS["decoded"]: ""}
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(image, dtype=DECODED_DTYPE), allow_pickle=False)
        data = buf.getvalue()
        atomic_write_bytes(self.decoded_path(cell_hash), data)
        return {"decoded": str(self.decoded_path(cell_hash).relative_to(self.root)),
                CHECKSUMS["decoded"]: sha256_bytes(data)}

    def _read_checked(self, cell_hash: str, kind: str, path: Path) -> bytes:
        label = LABELS[kind]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConvergenceError(f"missing {label} {path} of {self.describe(cell_hash)}; "
                                   "`convergence run` recomputes it") from None
        want = self._expected(cell_hash, kind)
        if want is not None and sha256_bytes(data) != want:
            raise ConvergenceError(f"{label} {path} of {self.describe(cell_hash)} does not match its "
                                   "sha256 (damaged or replaced); `convergence run` recomputes it")
        return data

    def load_sample(self, cell_hash: str) -> np.ndarray:
        path = self.sample_path(cell_hash)
        data = self._read_checked(cell_hash, "sample", path)
        try:
            with np.load(io.BytesIO(data)) as f:
                return f["sample"]
        except Exception as e:
            raise ConvergenceError(f"corrupt float sample {path} ({type(e).__name__})") from None

    def load_decoded(self, cell_hash: str) -> np.ndarray:
        """The cell's decoded float image, (H, W, 3) float32 in the model's display range."""
        path = self.decoded_path(cell_hash)
        data = self._read_checked(cell_hash, "decoded", path)
        try:
            x = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:
            raise ConvergenceError(f"corrupt {LABELS['decoded']} {path} ({type(e).__name__})") from None
        if x.ndim != 3 or x.shape[-1] != 3 or x.dtype != DECODED_DTYPE:
            raise ConvergenceError(f"corrupt {LABELS['decoded']} {path} (shape {x.shape}, "
                                   f"dtype {x.dtype}; expected (H, W, 3) {np.dtype(DECODED_DTYPE)})")
        return x

    def load_image(self, cell_hash: str) -> np.ndarray:
        path = self.image_path(cell_hash)
        data = self._read_checked(cell_hash, "image", path)
        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"))
        except Exception as e:
            raise ConvergenceError(f"corrupt image {path} ({type(e).__name__})") from None

    def read_json(self, name: str, remedy: str = "`convergence run` with the study's settings "
                  "rewrites it") -> dict:
        """A side file of the store (``study.json``, ``runs.json``) as a dict ({} if absent);
        a damaged one is an error naming it and ``remedy``."""
        path = self.root / name
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as e:
            raise ConvergenceError(f"{path} is damaged ({type(e).__name__}); {remedy}") from None
        if not isinstance(obj, dict):
            raise ConvergenceError(f"{path} is damaged (not a JSON object); {remedy}")
        return obj

    def write_json(self, name: str, obj: dict) -> None:
        atomic_write_bytes(self.root / name, json.dumps(obj, indent=2, default=str).encode())

