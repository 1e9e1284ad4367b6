"""Writes that either complete or leave the previous file (or folder) as it was.

Every temporary name carries its writer's ``pid@host``, so a later run can tell the
leftovers of a killed writer (cleaned up) from the files of one still writing (kept).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = socket.gethostname()
_OWNED = re.compile(r"\.(\d+)@(.+)\.tmp$")
#: leftovers whose owner cannot be checked (another host) are removed after this long
FOREIGN_TMP_SECONDS = 24 * 3600


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(pid: int, host: str) -> bool | None:
    """Whether the process that owns a name lives: None when it runs on another host."""
    return pid_alive(pid) if host == HOST else None


def tmp_name(path: Path, kind: str = "") -> Path:
    """A hidden sibling of ``path`` that names its owner (see :func:`clean_stale`)."""
    tag = f"{kind}." if kind else ""
    return path.with_name(f".{path.name}.{tag}{uuid.uuid4().hex[:8]}.{os.getpid()}@{HOST}.tmp")


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to a temporary sibling, fsync, and rename it over ``path``.

    ``fsync=False``: readers still see the old file or the whole new one, but a machine
    crash may lose the write (for files that mean nothing after one, such as claims)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed write or fsync names no file: name the one meant
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def staged_into(root: Path) -> Iterator[Path]:
    """A scratch folder whose files move into ``root`` together when the block ends without
    an error; on an error none of them replaces what was there. A killed earlier
    block's scratch folder is removed first."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root, depth=0)
    work = tmp_name(root / "staged", "new")
    work.mkdir()
    try:
        yield work
        for p in sorted(work.rglob("*")):
            if p.is_file() and not p.name.endswith(".tmp"):
                dest = root / p.relative_to(work)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(p, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """Build a folder aside and swap it in for ``dest`` only when the block succeeds.

    Between the two renames ``dest`` is briefly absent; a crash there leaves the old
    folder under an ``.old.`` name, which :func:`clean_stale` puts back (here too, before
    a new folder is built, along with a killed earlier build)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest.parent, depth=0)
    work = tmp_name(dest, "new")
    work.mkdir()
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    old = tmp_name(dest, "old")
    if dest.exists():
        os.rename(dest, old)
    os.rename(work, dest)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale(root: Path, depth: int = 2) -> int:
    """Remove temporary files and folders left by killed writers under ``root`` (to
    ``depth`` levels); restore a folder a killed :func:`staged_dir` left renamed.
    Returns how many leftovers were handled. Files of live writers are kept."""
    root = Path(root)
    if not root.is_dir():
        return 0
    n = 0
    dirs = [root]
    for _ in range(depth + 1):
        nxt = []
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                m = _OWNED.search(e.name) if e.name.startswith(".") else None
                if m is None:
                    if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                        nxt.append(Path(e.path))
                    continue
                alive = owner_alive(int(m.group(1)), m.group(2))
                if alive or (alive is None and
                             time.time() - e.stat(follow_symlinks=False).st_mtime < FOREIGN_TMP_SECONDS):
                    continue
                path = Path(e.path)
                target = _target_of(path)
                if ".old." in e.name and target is not None and not target.exists():
                    os.rename(path, target)
                elif path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                n += 1
        dirs = nxt
    return n


def _target_of(tmp: Path) -> Path | None:
    """The name a temporary ``.NAME.[kind.]RAND.PID@HOST.tmp`` stands in for."""
    stem = _OWNED.sub("", tmp.name)  # .NAME.[kind.]RAND
    parts = stem[1:].rsplit(".", 1)[0]  # NAME.[kind]
    for kind in (".old", ".new"):
        if parts.endswith(kind):
            parts = parts[: -len(kind)]
    return tmp.with_name(parts) if parts else None
