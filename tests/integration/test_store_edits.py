"""Integrity against edits, not only accidents (issue 30): rows re-hashed against their
cell hash, the manifest of the writers' parts and rows, the study digest, one bad part
file costing only its own cells, verify on a read-only store, and runs.json kept whole
under concurrent writers and damage."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import stat

import numpy as np
import pandas as pd
import pytest
from inprocess import run_main

from convergence.core.atomic import HOST
from convergence.core.manifest import study_digest
from convergence.core.store import Store
from convergence.run.runner import RUNS, load_runs, record_run, run_study


@pytest.fixture
def stored(study_config, model32):
    cfg = study_config()
    summary = run_study(cfg, model32)
    return cfg, summary.store


def _verify(capsys, cfg) -> tuple[int, str]:
    code, out, err = run_main(capsys, "verify", f"results_dir={cfg.results_dir}", f"name={cfg.name}")
    assert "Traceback" not in out + err
    return code, out


def _edit_table(store: Store, edit) -> None:
    df = pd.read_parquet(store.table_path)
    edit(df)
    df.to_parquet(store.table_path, index=False)


def test_an_edited_row_is_named_and_recomputed(stored, model32, capsys):
    cfg, store = stored
    h = str(store.load().hash.iloc[-1])
    before = store.sample_path(h).read_bytes()

    def steps_16_to_4(df):
        df.loc[df.hash == h, "steps"] = 2
    _edit_table(store, steps_16_to_4)
    code, out = _verify(capsys, cfg)
    assert code == 1 and h in out and "edited" in out and "`convergence run`" in out
    again = run_study(cfg, model32)
    assert again.ran == 1
    assert store.sample_path(h).read_bytes() == before
    assert _verify(capsys, cfg)[0] == 0


def test_a_row_edited_with_a_consistent_sha_is_detected(stored, model32, capsys):
    """The issue's consistent tamper: a sample scaled by 1.01 and its sha256 rewritten."""
    cfg, store = stored
    h = str(store.load().hash.iloc[0])
    x = store.load_sample(h)
    buf = io.BytesIO()
    np.savez(buf, sample=x * np.float32(1.01))
    store.sample_path(h).write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()

    def rewrite(df):
        df.loc[df.hash == h, "sample_sha256"] = sha
    _edit_table(store, rewrite)
    fresh = Store(store.root)
    assert fresh.files(h) and h in fresh.problems()
    assert "manifest.jsonl" in fresh.problems()[h]
    code, out = _verify(capsys, cfg)
    assert code == 1 and h in out
    assert run_study(cfg, model32).ran == 1
    np.testing.assert_array_equal(Store(store.root).load_sample(h), x)


def test_a_foreign_part_is_not_read_and_verify_names_compact(stored, model32, capsys):
    cfg, store = stored
    df = store.load()
    fake = df.iloc[:3].copy()
    fake["sample_sha256"] = "0" * 64
    name = "99999999999999999999-1@evil-00001.parquet"
    store.parts_dir.mkdir(exist_ok=True)
    fake.to_parquet(store.parts_dir / name, index=False)
    code, out = _verify(capsys, cfg)
    assert code == 1 and name in out and "`convergence store compact`" in out
    assert (store.parts_dir / name).exists()  # verify moved nothing
    reader = Store(store.root)
    loaded = reader.load()
    assert not reader.problems() and len(loaded) == len(df)
    assert not (store.parts_dir / name).exists()
    assert (store.root / "quarantine" / name).exists()
    assert "moved it to quarantine/" in capsys.readouterr().err
    assert run_study(cfg, model32).ran == 0
    assert _verify(capsys, cfg)[0] == 0


def test_a_truncated_part_costs_only_its_own_cells(study_config, model32, capsys):
    cfg = study_config(steps=[4])
    run_study(cfg, model32)
    store = Store(cfg.study_dir())
    n_first = len(store.load())
    more = study_config(steps=[4, 8])
    # a second run appends its parts and is stopped before compacting
    real = Store.compact
    Store.compact = lambda self: (0, 0)
    try:
        run_study(more, model32)
    finally:
        Store.compact = real
    parts = sorted(store.parts_dir.glob("*.parquet"))
    victim = parts[0]
    lost = set(pd.read_parquet(victim).hash)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    code, out = _verify(capsys, more)
    assert code == 1 and victim.name in out and "unreadable" in out
    summary = run_study(more, model32)
    err = capsys.readouterr().err
    assert summary.ran == len(lost) and f"quarantine/{victim.name}" in err
    assert len(Store(store.root).load()) == n_first * 2
    assert (store.root / "quarantine" / victim.name).exists()


def _tree(root) -> list:
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_verify_writes_nothing_and_works_read_only(stored, capsys, tmp_path, monkeypatch):
    """Nothing under the results folder or the working folder changes (checked by listing,
    since the tests may run as root, whom chmod does not stop), on a read-only store too."""
    cfg, store = stored
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    os.chmod(store.root, stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, out = _verify(capsys, cfg)
    finally:
        os.chmod(store.root, stat.S_IRWXU)
    assert code == 0 and "study digest: sha256:" in out
    assert _tree(tmp_path) == before
    assert not (store.root.parent / ".hydra").exists()


def test_the_digest_is_the_documented_merkle_root(stored, study_config, model32, capsys):
    """Recomputed here from the rows alone, as docs/store.md says; a second store of the
    same cells (another process layout: batch_size 1) gives the same digest."""
    cfg, store = stored
    rows = store.load().to_dict("records")

    def h(b: bytes) -> bytes:
        return hashlib.sha256(b).digest()
    level = [h("\t".join([r["hash"], r["image_sha256"], r["sample_sha256"],
                          r.get("decoded_sha256") or ""]).encode())
             for r in sorted(rows, key=lambda r: r["hash"])]
    while len(level) > 1:
        level = [h(level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)] + (
            [level[-1]] if len(level) % 2 else [])
    code, out = _verify(capsys, cfg)
    assert f"study digest: sha256:{level[0].hex()}" in out
    other = run_study(study_config(results_dir=str(cfg.results_dir) + "-b", batch_size=1), model32)
    assert study_digest(other.store.load().to_dict("records")) == level[0].hex()


def test_duplicate_rows_are_found_in_the_raw_parts(stored, capsys):
    cfg, store = stored
    again = Store(store.root)
    again.append_rows(store.load().iloc[:2].to_dict("records"))
    code, out = _verify(capsys, cfg)
    assert code == 1 and "2 cells have more than one row" in out


def test_a_damaged_runs_json_never_fails_a_run(study_config, model32, capsys):
    cfg = study_config(steps=[4])
    root = cfg.study_dir()
    root.mkdir(parents=True)
    (root / RUNS).write_text('{"runs": [')
    summary = run_study(cfg, model32)
    assert summary.ran == 8
    err = capsys.readouterr().err
    assert f"{root / RUNS}" in err and "set it aside" in err
    assert len(load_runs(root)) == 1


def _record(root: str, i: int) -> None:
    for k in range(4):
        record_run(Store(root), {"writer": i, "k": k})


def test_concurrent_records_lose_no_entry(tmp_path):
    """10 processes x 4 entries (the issue's probe kept 10 of 40)."""
    ctx = multiprocessing.get_context("fork")  # the recorders touch no torch: fork is safe
    procs = [ctx.Process(target=_record, args=(str(tmp_path), i)) for i in range(10)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    runs = json.loads((tmp_path / RUNS).read_text())["runs"]
    assert sorted((r["writer"], r["k"]) for r in runs) == [(i, k) for i in range(10) for k in range(4)]


def test_a_killed_builds_staging_folder_is_removed_by_the_next(tmp_path):
    """analyze (staged_into) and report (staged_dir) remove what a killed run of
    themselves left, not only `run` does."""
    from convergence.core.atomic import staged_dir, staged_into
    dead = 2 ** 22 + 12345  # above Linux's default pid_max (2^22): no such process
    left = [tmp_path / f".staged.new.abcd1234.{dead}@{HOST}.tmp",
            tmp_path / f".report.new.abcd1234.{dead}@{HOST}.tmp"]
    for p in left:
        (p / "sub").mkdir(parents=True)
    with staged_into(tmp_path) as work:
        (work / "a.csv").write_text("x")
    assert not left[0].exists()
    with staged_dir(tmp_path / "report") as work:
        (work / "index.html").write_text("x")
    assert not left[1].exists() and (tmp_path / "report" / "index.html").exists()


def test_a_store_from_before_manifests_is_adopted_by_compact(stored, capsys):
    cfg, store = stored
    (store.root / "manifest.jsonl").unlink()
    fresh = Store(store.root)
    assert not fresh.problems()  # nothing to check against: no cell is flagged
    code, out = _verify(capsys, cfg)
    assert code == 1 and "no manifest.jsonl" in out and "`convergence store compact`" in out
    code, out, err = run_main(capsys, "store", "compact", f"results_dir={cfg.results_dir}",
                              f"name={cfg.name}")
    assert code == 0, err
    assert _verify(capsys, cfg)[0] == 0
