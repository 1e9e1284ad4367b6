"""Several real processes writing one study: claims keep them from computing a cell twice,
and a writer killed with SIGKILL loses nothing (benchmarks/chaos.py does this 50 times)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from writers import fork_writer as _writer
from writers import wait_writer as _wait

from convergence.core.store import Store
from convergence.run.runner import run_study

pytestmark = pytest.mark.concurrent


def _images(store: Store) -> dict[str, bytes]:
    return {h: store.image_path(h).read_bytes() for h in store.load().hash}


def test_three_writers_compute_each_cell_once(study_config, model32, tmp_path):
    cfg = study_config(batch_size=2, results_dir=str(tmp_path / "shared"))
    log = tmp_path / "computed.log"
    pids = [_writer(cfg, model32, log) for _ in range(3)]
    assert [_wait(p) for p in pids] == [0, 0, 0]
    runs = Counter(log.read_text().split())
    assert len(runs) == 16 and set(runs.values()) == {1}
    store = Store(tmp_path / "shared" / "t")
    alone = run_study(study_config(results_dir=str(tmp_path / "alone")), model32).store
    assert _images(store) == _images(alone)
    assert not store.problems() and not list((store.root / "claims").iterdir())


def test_killed_writer_loses_nothing_and_relaunch_does_the_rest(study_config, model32, tmp_path):
    cfg = study_config(batch_size=1, results_dir=str(tmp_path / "shared"))
    log = tmp_path / "computed.log"
    victim = _writer(cfg, model32, log)
    other = _writer(cfg, model32, log)
    deadline = time.time() + 20
    while time.time() < deadline and (not log.exists() or len(log.read_text().split()) < 4):
        time.sleep(0.02)
    os.kill(victim, signal.SIGKILL)
    assert _wait(victim) == -signal.SIGKILL
    assert _wait(other) == 0          # it takes over the dead writer's claims at once
    assert _wait(_writer(cfg, model32, log)) == 0
    store = Store(tmp_path / "shared" / "t")
    alone = run_study(study_config(results_dir=str(tmp_path / "alone")), model32).store
    assert _images(store) == _images(alone) and not store.problems()
    runs = Counter(log.read_text().split())
    # computed again: at most the victim's cells in flight, one batch (batch_size=1) being
    # computed and one being written by the store's writer thread
    assert len(runs) == 16 and sum(runs.values()) <= 18
