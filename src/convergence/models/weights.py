"""A digest of a model's weight files, so changed weights at the same path get new cells.

Hashing gigabytes on every run would be slow, so each file's sha256 is cached by its
path, size and mtime in ``$XDG_CACHE_HOME/convergence/weights.json`` (a changed file
changes at least one of them and is hashed again).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from convergence.core.atomic import atomic_write_bytes

#: files that hold weights (configs are already in the fingerprint through the model)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".gguf")
CHUNK = 1 << 20


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "convergence" / "weights.json"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _folder(path_or_id: str) -> Path | None:
    """The local folder of a pipeline: the path itself, or a hub id's cached snapshot."""
    p = Path(os.path.expanduser(str(path_or_id)))
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(str(path_or_id), local_files_only=True))
    except Exception:  # not cached (offline): the fingerprint keeps the id alone
        return None


def weights_digest(path_or_id: str) -> str | None:
    """sha256 over (relative name, sha256) of every weight file under the model's folder;
    None when no local files can be found."""
    folder = _folder(path_or_id)
    if folder is None:
        return None
    files = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    cache_file = cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    total, changed = hashlib.sha256(), False
    for p in files:
        st = p.stat()  # follows the hub cache's symlinks to the blobs
        key = str(p.resolve())
        stamp = [st.st_size, st.st_mtime_ns]
        hit = cache.get(key)
        if not hit or hit[:2] != stamp:
            cache[key] = [*stamp, _file_sha256(p)]
            changed = True
        total.update(f"{p.relative_to(folder).as_posix()}\0{cache[key][2]}\n".encode())
    if changed:
        try:
            atomic_write_bytes(cache_file, json.dumps(cache).encode())
        except OSError:
            pass  # a read-only home only costs re-hashing next time
    return total.hexdigest()[:16]
