"""Claim files with expiry, so writers sharing one study do not compute a cell twice.

Before computing a batch a writer claims its cells (``claims/<cell hash>``, holding
``pid@host`` and a token) under the store's lock; cells another live writer holds are left to it.
A claim lapses when its writer's process is gone (same host) or when it has not been
renewed for ``ttl`` seconds (any host): a daemon thread renews a live writer's claims
every ``ttl / 4``, so only a dead or frozen writer's claims expire.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from convergence.core.atomic import HOST, atomic_write_bytes, owner_alive


class Leases:
    """One writer's claims on cells of one store (use as a context manager)."""

    def __init__(self, folder: Path, lock: Callable, ttl: float = 120.0):
        self.folder = Path(folder)
        self.lock = lock
        self.ttl = float(ttl)
        self.mine: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: ``pid@host token``: the token tells writers of one process apart
        self.me = f"{os.getpid()}@{HOST} {uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Leases:
        self._thread = threading.Thread(target=self._renew, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.release(list(self.mine))

    def _path(self, cell_hash: str) -> Path:
        return self.folder / cell_hash

    def holder(self, cell_hash: str) -> str | None:
        """``pid@host`` of the live writer holding this cell (None if free or lapsed)."""
        path = self._path(cell_hash)
        try:
            owner = path.read_text().strip()
            age = time.time() - path.stat().st_mtime
        except (FileNotFoundError, OSError):
            return None
        if owner == self.me:
            return owner if cell_hash in self.mine else None
        pid, _, host = owner.split(" ")[0].partition("@")
        alive = owner_alive(int(pid), host) if pid.isdigit() else False
        if alive is False or age > self.ttl:
            return None
        return owner

    def take(self, hashes: Iterable[str], done: Callable[[], set[str]]) -> list[str]:
        """Claim the cells of ``hashes`` that nobody holds and ``done()`` does not list."""
        got = []
        with self.lock():
            finished = done()
            for h in hashes:
                if h in finished or (h not in self.mine and self.holder(h) is not None):
                    continue
                # no fsync: a claim only matters while its writer lives, and a machine
                # crash ends every writer on it
                atomic_write_bytes(self._path(h), self.me.encode(), fsync=False)
                self.mine.add(h)
                got.append(h)
        return got

    def release(self, hashes: Iterable[str]) -> None:
        """Give up claims (after the cells' rows are stored). Under the lock, so a writer
        in :meth:`take` sees either the claim or the stored row, never neither."""
        hashes = [h for h in hashes if h in self.mine]
        if not hashes:
            return
        with self.lock():
            for h in hashes:
                self.mine.discard(h)
                try:
                    if self._path(h).read_text().strip() == self.me:
                        self._path(h).unlink()
                except OSError:
                    pass

    def held_by_others(self, hashes: Iterable[str]) -> dict[str, str]:
        """Cells of ``hashes`` that another live writer holds, with their holder."""
        out = {}
        for h in hashes:
            if h not in self.mine:
                who = self.holder(h)
                if who is not None:
                    out[h] = who
        return out

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            for h in list(self.mine):
                try:
                    os.utime(self._path(h))
                except OSError:
                    pass
