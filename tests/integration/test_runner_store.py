"""Runner and store: reproducibility, resume, atomic and merge-safe writes, bad data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from convergence.core.errors import ConvergenceError, Interrupted
from convergence.core.store import Store
from convergence.run.plan import Cell, expand
from convergence.run.runner import run_study


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(store: Store) -> dict[str, str]:
    return {p.name: _digest(p) for p in sorted((store.root / "images").glob("*.png"))}


def test_cells_have_stable_distinct_hashes(study_config, model32):
    cfg = study_config(samplers=["euler", "K_EULER", "DPM++ 2M Karras"], steps=[4, 8])
    cells = expand(cfg, model32.name, model32.fingerprint())
    # K_EULER and euler are one sampler: deduplicated
    assert len(cells) == 2 * 4 * 2
    assert len({c.hash for c in cells}) == len(cells)
    again = expand(cfg, model32.name, model32.fingerprint())
    assert [c.hash for c in cells] == [c.hash for c in again]
    assert {c.schedule for c in cells if c.sampler == "dpmpp_2m"} == {"karras"}
    assert {c.schedule for c in cells if c.sampler == "euler"} == {"discrete"}


def test_seeds_override_and_per_prompt_seeds(study_config, model32):
    own = expand(study_config(seeds_per_prompt=3), model32.name, {})
    assert sorted({c.seed for c in own if c.topic == "food"}) == [4053222918, 4053222919, 4053222920]
    shared = expand(study_config(seeds=[1, 2]), model32.name, {})
    assert {c.seed for c in shared} == {1, 2}


def test_store_rows_images_and_samples(study_config, model32):
    cfg = study_config()
    summary = run_study(cfg, model32)
    df = summary.store.load()
    assert len(df) == summary.ran == 16
    for col in ("hash", "topic", "prompt", "seed", "sampler", "schedule", "steps", "cfg", "nfe",
                "seconds", "image", "sample", "width", "height"):
        assert col in df.columns
    row = df.iloc[0]
    assert (summary.store.root / row.image).exists()
    s = summary.store.load_sample(row.hash)
    assert s.shape == (3, 32, 32) and s.dtype == np.float32
    assert set(df[df.sampler == "heun"].nfe) == {7, 15}


@pytest.mark.portable
def test_same_study_twice_is_bit_identical_and_rerun_is_free(study_config, tmp_path, model32):
    a = run_study(study_config(results_dir=str(tmp_path / "a")), model32)
    b = run_study(study_config(results_dir=str(tmp_path / "b")), model32)
    assert _files(a.store) == _files(b.store)
    again = run_study(study_config(results_dir=str(tmp_path / "a")), model32)
    assert again.ran == 0 and again.skipped == 16


@pytest.mark.portable
def test_resumed_run_equals_uninterrupted_run(study_config, tmp_path, model32, monkeypatch):
    import convergence.run.runner as runner

    full = run_study(study_config(results_dir=str(tmp_path / "full"), batch_size=6), model32)
    real = runner.store_rows
    stored: list[int] = []

    def dies_on_third_batch(store, model, batch, *args):
        if len(stored) == 2:
            raise KeyboardInterrupt("killed")
        rows = real(store, model, batch, *args)
        stored.append(len(batch))
        return rows

    monkeypatch.setattr(runner, "store_rows", dies_on_third_batch)
    cfg = study_config(results_dir=str(tmp_path / "resumed"), batch_size=6)
    with pytest.raises(Interrupted, match="of 16 cells .* run the same command again"):
        run_study(cfg, model32)
    partial = Store(tmp_path / "resumed" / "t").load()
    assert len(partial) == sum(stored) >= 2  # the two finished batches were kept
    monkeypatch.setattr(runner, "store_rows", real)
    resumed = run_study(cfg, model32)
    assert resumed.ran == 16 - sum(stored) and resumed.skipped == sum(stored)
    assert _files(resumed.store) == _files(full.store)
    cols = ["hash", "sampler", "steps", "seed", "nfe"]
    key = lambda df: df[cols].sort_values("hash").reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(key(resumed.store.load()), key(full.store.load()))


def test_extending_a_study_only_runs_new_cells(study_config, model32):
    run_study(study_config(steps=[4]), model32)
    more = run_study(study_config(steps=[4, 8]), model32)
    assert more.ran == 8 and more.skipped == 8


def test_corrupt_table_is_an_error_and_left_untouched(study_config, model32):
    cfg = study_config(steps=[4])
    summary = run_study(cfg, model32)
    path = summary.store.table_path
    path.write_bytes(b"not a parquet file")
    with pytest.raises(ConvergenceError, match="corrupt or unreadable"):
        run_study(cfg, model32)
    assert path.read_bytes() == b"not a parquet file"


def test_nan_names_the_cell_and_keeps_stored_cells(study_config, model32, monkeypatch):
    cfg = study_config(steps=[4, 8], batch_size=4)
    first = run_study(study_config(steps=[4], batch_size=4), model32)
    stored = first.store.load()
    real = model32.denoise

    def poisoned(x, sigma, cond):
        out = real(x, sigma, cond)
        if float(sigma.min()) < 0.1:
            out = out.clone()
            out[0] = float("nan")
        return out

    monkeypatch.setattr(model32, "denoise", poisoned)
    with pytest.raises(ConvergenceError, match=r"NaN/inf .* cell [0-9a-f]{16} \(sampler=\w+, schedule=\w+, steps=8"):
        run_study(cfg, model32)
    after = first.store.load()
    assert set(stored.hash) <= set(after.hash)


def test_concurrent_appends_merge(tmp_path):
    store = Store(tmp_path)
    store.append_rows([{"hash": "a", "v": 1}, {"hash": "b", "v": 2}])
    store.append_rows([{"hash": "b", "v": 3}, {"hash": "c", "v": 4}])
    df = store.load().set_index("hash")
    assert df.v.to_dict() == {"a": 1, "b": 3, "c": 4}
    assert not list(tmp_path.glob(".*.tmp"))


def test_fp32_sample_round_trip(tmp_path):
    store = Store(tmp_path)
    x = torch.randn(3, 8, 8).numpy().astype(np.float32)
    store.write_sample("abc", x)
    assert np.array_equal(store.load_sample("abc"), x)
    with pytest.raises(ConvergenceError, match="missing float sample"):
        store.load_sample("nope")


def test_cell_hash_changes_with_every_axis():
    base = Cell("analytic", "m", "food", "p", 1, "euler", "karras", 4, 7.5, 32, 32)
    fields = {"model": "x", "model_hash": "n", "topic": "people", "prompt": "q", "seed": 2,
              "sampler": "heun", "schedule": "discrete", "steps": 5, "cfg": 5.0, "width": 40,
              "height": 40}
    seen = {base.hash}
    for k, v in fields.items():
        h = Cell(**{**base.__dict__, k: v}).hash
        assert h not in seen, k
        seen.add(h)


def test_a_slow_disk_pauses_the_run_instead_of_piling_up_results(study_config, model32,
                                                                 monkeypatch):
    """16 one-cell batches of a few ms each, a writer that takes 50 ms a batch: each new
    batch starts only while at most MAX_UNWRITTEN finished ones wait to be written (13
    waited with the bound lifted: measured)."""
    import time

    import convergence.run.runner as runner

    real_store, real_sample = runner.store_rows, runner.sample_batch
    computed, stored, unwritten = [0], [0], []

    def slow_store(*args):
        time.sleep(0.05)
        rows = real_store(*args)
        stored[0] += len(args[2])
        return rows

    def sample(model, cells, *args):
        unwritten.append(computed[0] - stored[0])
        res = real_sample(model, cells, *args)
        computed[0] += len(cells)
        return res

    monkeypatch.setattr(runner, "store_rows", slow_store)
    monkeypatch.setattr(runner, "sample_batch", sample)
    summary = run_study(study_config(samplers=["euler"], steps=[2, 3, 4, 5], batch_size=2), model32)
    assert summary.ran == 16 and len(unwritten) == 16
    assert 0 < max(unwritten) <= runner.MAX_UNWRITTEN


def test_finite_check_names_nan_rows_and_lets_huge_finite_values_pass():
    # the check sums first: finite values whose sum overflows must still pass, NaN must not
    import torch

    from convergence.models.base import CountingDenoiser, NonFiniteSample

    class Rows:
        rows_evaluated = 0

        def __init__(self, out):
            self.out = out

        def __call__(self, x, sigma, **_):
            return self.out

    huge = torch.full((3, 4), 1e308, dtype=torch.float64)
    assert not torch.isfinite(huge.sum())
    x, s = torch.zeros(3, 4), torch.ones(3)
    assert CountingDenoiser(Rows(huge))(x, s) is huge
    bad = huge.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(NonFiniteSample) as e:
        CountingDenoiser(Rows(bad))(x, s)
    assert e.value.rows == [1]
