"""Store integrity: checksums, damaged files, part files, claims, outputs replaced whole."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from inprocess import run_main

from convergence.core.atomic import HOST, clean_stale, staged_dir, staged_into
from convergence.core.errors import ConvergenceError
from convergence.core.store import Store
from convergence.run.runner import run_study


@pytest.fixture
def stored(study_config, model32):
    """A stored 16-cell study and its config."""
    cfg = study_config()
    summary = run_study(cfg, model32)
    return cfg, summary.store


def _flip_byte(path, offset=-20):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _scale_sample(store, h, factor):
    x = store.load_sample(h)
    buf = io.BytesIO()
    np.savez_compressed(buf, sample=x * np.float32(factor))
    store.sample_path(h).write_bytes(buf.getvalue())


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rows_record_the_sha256_of_their_files(stored):
    _, store = stored
    df = store.load()
    for r in df.itertuples():
        assert r.image_sha256 == _digest(store.image_path(r.hash))
        assert r.sample_sha256 == _digest(store.sample_path(r.hash))
    assert not store.problems()


def test_damage_of_every_kind_is_found_and_recomputed(stored, model32):
    cfg, store = stored
    h = list(store.load().hash)
    originals = {x: (store.image_path(x).read_bytes(), store.sample_path(x).read_bytes())
                 for x in h[:4]}
    _flip_byte(store.image_path(h[0]))                                  # a flipped bit
    shutil.copy(store.image_path(h[2]), store.image_path(h[1]))         # another cell's PNG
    _scale_sample(store, h[2], 1.01)                                    # an npz scaled by 1.01
    store.image_path(h[3]).unlink()                                     # a deleted PNG
    fresh = Store(store.root)
    problems = fresh.problems()
    assert set(problems) == set(h[:4])
    assert "does not match its sha256" in problems[h[0]]
    assert "sample samples/" in problems[h[2]]
    assert "is missing" in problems[h[3]]
    again = run_study(cfg, model32)
    assert again.ran == 4 and again.skipped == 12
    for x, (img, smp) in originals.items():  # recomputed bit for bit
        assert store.image_path(x).read_bytes() == img and store.sample_path(x).read_bytes() == smp
    assert not Store(store.root).problems()


def test_loading_a_damaged_file_names_the_cell(stored):
    _, store = stored
    h = store.load().hash.iloc[0]
    _scale_sample(store, h, 1.01)
    with pytest.raises(ConvergenceError, match=f"float sample .* cell {h} .* does not match"):
        Store(store.root).load_sample(h)


def test_verify_lists_each_problem_and_exits_1(stored, capsys):
    cfg, store = stored
    h = list(store.load().hash)
    _flip_byte(store.image_path(h[0]))
    store.sample_path(h[1]).unlink()
    code, out, err = run_main(capsys, "verify", f"results_dir={cfg.results_dir}", f"name={cfg.name}")
    assert code == 1, err
    lines = out.strip().splitlines()
    assert len([x for x in lines if x.startswith("damaged:")]) == 2
    assert any(h[0] in x and "image" in x for x in lines)
    assert any(h[1] in x and "sample" in x and "missing" in x for x in lines)
    assert "2 problems in 16 cells" in lines[-1]


def test_verify_of_an_intact_store_exits_0(stored, capsys):
    cfg, _ = stored
    code, out, _ = run_main(capsys, "verify", f"results_dir={cfg.results_dir}", f"name={cfg.name}")
    assert code == 0 and "16 cells, every stored file matches" in out


def test_writers_append_parts_and_readers_take_the_union(tmp_path):
    a, b = Store(tmp_path), Store(tmp_path)
    a.append_rows([{"hash": "x", "v": 1}, {"hash": "y", "v": 2}])
    b.append_rows([{"hash": "y", "v": 3}, {"hash": "z", "v": 4}])
    parts = sorted((tmp_path / "parts").glob("*.parquet"))
    assert len(parts) == 2
    before = {p: p.read_bytes() for p in parts}
    a.append_rows([{"hash": "w", "v": 5}])
    assert all(p.read_bytes() == data for p, data in before.items())  # never rewritten
    df = Store(tmp_path).load().set_index("hash")
    assert df.v.to_dict() == {"x": 1, "y": 3, "z": 4, "w": 5}
    rows, folded = Store(tmp_path).compact()
    assert (rows, folded) == (4, 3)
    assert not list((tmp_path / "parts").glob("*.parquet"))
    assert pd.read_parquet(tmp_path / "cells.parquet").set_index("hash").v.to_dict() == df.v.to_dict()
    assert not list(tmp_path.rglob("*.tmp"))


def test_reader_retries_when_compaction_removes_a_part(tmp_path, monkeypatch):
    """A part can vanish between listing and reading (compact folded it into the table):
    the read starts over and still sees every row."""
    w = Store(tmp_path)
    w.append_rows([{"hash": "a", "v": 1}])
    w.append_rows([{"hash": "b", "v": 2}])
    reader = Store(tmp_path)
    real = reader._part_names
    calls = {"n": 0}

    def list_then_compact():
        names = real()
        calls["n"] += 1
        if calls["n"] == 1:
            Store(tmp_path).compact()
        return names

    monkeypatch.setattr(reader, "_part_names", list_then_compact)
    assert set(reader.load().hash) == {"a", "b"} and calls["n"] == 2


def test_compaction_keeps_a_part_renamed_in_after_it_read(tmp_path, monkeypatch):
    """A writer records its part in the manifest under the lock and renames it into place
    after the lock: a compaction that read the parts before that rename must not delete the
    part when it lands mid-compaction (4 joblib workers lost a cell this way, 35 of 36)."""
    import convergence.core.store as store_mod

    Store(tmp_path).append_rows([{"hash": "a", "v": 1}])
    late, real_write = [], store_mod.atomic_write_bytes
    monkeypatch.setattr(store_mod, "atomic_write_bytes",
                        lambda path, data: late.append((path, data)))
    Store(tmp_path).append_rows([{"hash": "b", "v": 2}])   # manifest line written, part not yet
    monkeypatch.setattr(store_mod, "atomic_write_bytes", real_write)
    compactor = Store(tmp_path)
    real_load = compactor.load

    def load_then_the_rename_lands():
        df = real_load()
        real_write(*late.pop())
        return df

    monkeypatch.setattr(compactor, "load", load_then_the_rename_lands)
    compactor.compact()
    assert not late and set(Store(tmp_path).load().hash) == {"a", "b"}


def test_claims_exclude_other_writers_until_they_die_or_expire(tmp_path):
    store = Store(tmp_path)
    done = set
    with store.leases(ttl=60) as a:
        assert a.take(["c1", "c2"], done) == ["c1", "c2"]
        b = store.leases(ttl=60)
        assert b.take(["c1", "c2", "c3"], done) == ["c3"]      # c1, c2 are a's
        assert b.take(["c4"], lambda: {"c4"}) == []             # already stored
    # a released its claims on exit
    assert Store(tmp_path).leases(60).take(["c1"], done) == ["c1"]
    claims = tmp_path / "claims"
    (claims / "d1").write_text(f"999999999@{HOST}")             # a dead writer on this host
    (claims / "d2").write_text("1@another-host")                # alive elsewhere, renewed
    (claims / "d3").write_text("1@another-host")                # ... not renewed for 2 ttl
    old = time.time() - 10
    os.utime(claims / "d3", (old, old))
    c = Store(tmp_path).leases(ttl=5)
    assert c.take(["d1", "d2", "d3"], done) == ["d1", "d3"]


def test_stale_temporary_files_are_cleaned_live_ones_kept(tmp_path):
    (tmp_path / "images").mkdir()
    dead = tmp_path / "images" / f".x.png.abcd1234.999999999@{HOST}.tmp"
    live = tmp_path / "images" / f".y.png.abcd1234.{os.getpid()}@{HOST}.tmp"
    dead.write_bytes(b"partial")
    live.write_bytes(b"being written")
    assert clean_stale(tmp_path) == 1
    assert not dead.exists() and live.exists()


def test_staged_outputs_replace_the_old_ones_only_on_success(tmp_path):
    (tmp_path / "a.csv").write_text("old a")
    with pytest.raises(RuntimeError), staged_into(tmp_path) as out:
        (out / "a.csv").write_text("new a")
        raise RuntimeError("failed half way")
    assert (tmp_path / "a.csv").read_text() == "old a" and len(list(tmp_path.iterdir())) == 1
    with staged_into(tmp_path) as out:
        (out / "a.csv").write_text("new a")
        (out / "b.csv").write_text("new b")
    assert (tmp_path / "a.csv").read_text() == "new a" and (tmp_path / "b.csv").exists()

    report = tmp_path / "report"
    with staged_dir(report) as out:
        (out / "index.html").write_text("v1")
    with pytest.raises(RuntimeError), staged_dir(report) as out:
        (out / "index.html").write_text("v2 half")
        raise RuntimeError
    assert (report / "index.html").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv", "report"]


def test_a_swap_killed_between_renames_is_undone(tmp_path):
    """staged_dir's window: the old folder renamed away, the new one not yet in place."""
    old = tmp_path / f".report.old.abcd1234.999999999@{HOST}.tmp"
    old.mkdir()
    (old / "index.html").write_text("v1")
    clean_stale(tmp_path)
    assert (tmp_path / "report" / "index.html").read_text() == "v1"


def test_failed_run_keeps_study_json(stored, study_config, model32, monkeypatch):
    _, store = stored
    before = (store.root / "study.json").read_bytes()
    import convergence.run.runner as runner

    def broken(*a, **k):
        raise ConvergenceError("the model failed")

    monkeypatch.setattr(runner, "sample_batch", broken)
    with pytest.raises(ConvergenceError):
        run_study(study_config(steps=[4, 8, 16]), model32)
    assert (store.root / "study.json").read_bytes() == before


@pytest.mark.slow
def test_failed_analysis_and_report_leave_previous_outputs(stored, monkeypatch):
    from convergence.analysis import analyze_study
    from convergence.report import write_report
    cfg, store = stored
    cfg.analysis.metrics = ["rmse"]
    analyze_study(cfg)
    write_report(cfg)
    tables = {n: (store.root / n).read_bytes() for n in ("distances.parquet", "keypoints.csv")}

    def report_files():
        return {p.relative_to(store.root): p.read_bytes()
                for p in (store.root / "report").rglob("*") if p.is_file()}

    report = report_files()
    import convergence.analysis as analysis
    import convergence.report as rep
    assert analysis.calibration_table and rep.write_grids  # the late steps patched below

    def boom(*a, **k):
        raise ConvergenceError("failed late")

    monkeypatch.setattr(analysis, "calibration_table", boom)  # after distances and key points
    monkeypatch.setattr(rep, "write_grids", boom)             # after tables and curves
    with pytest.raises(ConvergenceError):
        analyze_study(cfg)
    with pytest.raises(ConvergenceError):
        write_report(cfg)
    assert {n: (store.root / n).read_bytes() for n in tables} == tables
    assert report_files() == report
    assert not list(store.root.rglob("*.tmp"))


def test_diverging_values_are_flagged(study_config, model32, monkeypatch, capsys):
    real = model32.denoise
    monkeypatch.setattr(model32, "denoise", lambda x, s, c: real(x, s, c) * 1e5)
    summary = run_study(study_config(samplers=["euler"], steps=[4]), model32)
    df = summary.store.load()
    assert df.diverged.all() and (df.max_abs > 1e3).all()
    assert sorted(summary.diverged) == sorted(df.hash)
    monkeypatch.setattr(model32, "denoise", real)
    ok = run_study(study_config(samplers=["euler"], steps=[4], results_dir=str(
        summary.store.root.parent / "ok")), model32).store.load()
    # pixels lie in [-1, 1]; CFG 7.5 at 4 steps overshoots to ~2.7 (measured), far below 1e3
    assert not ok.diverged.any() and (ok.max_abs < 10).all()
