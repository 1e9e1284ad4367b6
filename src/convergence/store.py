"""The results store of one study: ``cells.parquet`` (one row per cell) plus one PNG and
one float sample per cell, addressed by the cell's content hash.

Every file is written to a temporary name and renamed into place, and the table is
merged under a file lock, so a killed or concurrent run never loses stored cells.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from convergence.errors import ConvergenceError

TABLE = "cells.parquet"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.table_path = self.root / TABLE

    # -- paths ----------------------------------------------------------------------
    def image_path(self, cell_hash: str) -> Path:
        return self.root / "images" / f"{cell_hash}.png"

    def sample_path(self, cell_hash: str) -> Path:
        return self.root / "samples" / f"{cell_hash}.npz"

    # -- table ----------------------------------------------------------------------
    def load(self) -> pd.DataFrame:
        """All stored rows (empty frame if nothing is stored yet)."""
        if not self.table_path.exists():
            return pd.DataFrame()
        try:
            return pd.read_parquet(self.table_path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ConvergenceError(
                f"the results table {self.table_path} is corrupt or unreadable ({type(e).__name__}); "
                "it was left untouched: move it away to start over") from None

    def done_hashes(self) -> set[str]:
        """Hashes of cells whose row, image and sample all exist."""
        df = self.load()
        if df.empty:
            return set()
        return {h for h in df["hash"] if self.image_path(h).exists() and self.sample_path(h).exists()}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append_rows(self, rows: list[dict]) -> None:
        """Merge rows into the table (a re-run cell replaces its old row)."""
        if not rows:
            return
        with self._locked():
            old = self.load()
            new = pd.DataFrame(rows)
            df = new if old.empty else pd.concat([old, new], ignore_index=True)
            df = df.drop_duplicates("hash", keep="last").reset_index(drop=True)
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            atomic_write_bytes(self.table_path, buf.getvalue())

    # -- per-cell files -------------------------------------------------------------
    def write_image(self, cell_hash: str, image: np.ndarray) -> Path:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        path = self.image_path(cell_hash)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def write_sample(self, cell_hash: str, sample: np.ndarray) -> Path:
        buf = io.BytesIO()
        np.savez_compressed(buf, sample=sample)
        path = self.sample_path(cell_hash)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def load_sample(self, cell_hash: str) -> np.ndarray:
        path = self.sample_path(cell_hash)
        try:
            with np.load(path) as f:
                return f["sample"]
        except FileNotFoundError:
            raise ConvergenceError(f"missing float sample {path}; re-run `convergence run`") from None
        except Exception as e:
            raise ConvergenceError(f"corrupt float sample {path} ({type(e).__name__})") from None

    def load_image(self, cell_hash: str) -> np.ndarray:
        return np.asarray(Image.open(self.image_path(cell_hash)).convert("RGB"))

    def write_json(self, name: str, obj: dict) -> None:
        atomic_write_bytes(self.root / name, json.dumps(obj, indent=2, default=str).encode())
