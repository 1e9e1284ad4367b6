"""Chaos test of the results store: kill -9 at random moments, concurrent writers, and
deliberate edits and damage (issue 30).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/chaos.py [--trials 50] [--seed 0] [--only-edits]

Each trial forks a writer on a fresh study folder, kills it with SIGKILL at a random
moment of its run, then forks a second writer that finishes the study. Then 4 writers run
at once, on the same study and on overlapping parts of it, one of them killed and
re-launched. After each, the store must hold every planned cell once, every file must
match its checksum, and every image must equal the uninterrupted reference byte for byte.
Every computation is logged (a wrapper around ``runner.sample_batch``, installed in the
children only), so cells computed more than once are counted.

Then, on copies of the reference store: a damaged ``runs.json`` (a run must still succeed),
a truncated ``study.json`` (one line naming it), a consistent tamper (a sample scaled by
1.01 and its sha256 rewritten in the table: detected), a foreign part file (detected, not
read) and a truncated part file (set aside in quarantine/, and only its cells recomputed).

Prints ``cells lost: 0, duplicate rows: 0, cells computed twice: N, trials: 50`` and a line
per edit case (``--only-edits``: just those, after the reference run;
results/measured/chaos_edits.txt);
recorded output: results/measured/chaos.txt. Writers are forked from this process after
the imports and the model are built, so a trial costs a run, not ~20 s of imports.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))

from writers import fork_writer as writer
from writers import wait_writer as wait

from convergence.config import to_config
from convergence.core.errors import ConvergenceError
from convergence.core.store import Store
from convergence.models.analytic import AnalyticModel
from convergence.run.plan import expand
from convergence.run.runner import RUNS, load_runs

PROMPTS = [{"topic": "food", "seed": 4053222918, "text": "a hamburger with a bowl of french fries"},
           {"topic": "people", "seed": 2131956332, "text": "Ultra realistic photo"}]


def study(results: Path, steps=(2, 4, 8, 16), samplers=("euler", "heun", "euler_ancestral",
                                                         "dpmpp_2m")):
    """64 cells at 32x32 (2 prompts x 2 seeds x 4 samplers x 4 step counts), batches of 4."""
    return to_config({"name": "chaos", "results_dir": str(results), "prompts": PROMPTS,
                      "seeds_per_prompt": 2, "samplers": list(samplers), "steps": list(steps),
                      "width": 32, "height": 32, "batch_size": 4, "progress": False,
                      "claim_seconds": 30.0})


def image_digests(store: Store, hashes) -> dict[str, str]:
    return {h: hashlib.sha256(store.image_path(h).read_bytes()).hexdigest() for h in hashes}


def check(root: Path, planned: list[str], reference: dict[str, str], log: Path) -> dict:
    """Lost cells, duplicate rows, damaged files, images unlike the reference, extra runs."""
    store = Store(root)
    df = store.load()
    stored = list(df.hash) if len(df) else []
    raw = Store(root)
    raw_rows = 0
    if raw.table_path.exists():
        import pandas as pd
        t = pd.read_parquet(raw.table_path)
        raw_rows = int(t.hash.duplicated().sum())
    lost = [h for h in planned if h not in set(stored)]
    problems = store.problems()
    present = [h for h in planned if h in set(stored) and h not in problems]
    differ = [h for h, d in image_digests(store, present).items() if d != reference[h]]
    runs = Counter(log.read_text().split()) if log.exists() else Counter()
    return {"lost": len(lost), "dup": len(stored) - len(set(stored)) + raw_rows,
            "damaged": len(problems), "differ": len(differ),
            "twice": sum(n - 1 for n in runs.values() if n > 1),
            "tmp": len(list(root.rglob("*.tmp")))}


def edits(work: Path, model, reference_root: Path) -> dict[str, str]:
    """The issue-30 cases on copies of the reference store: what happened to each."""
    out = {}

    def copy(name: str) -> Path:
        dest = work / name / "chaos"
        shutil.copytree(reference_root, dest)
        return dest

    root = copy("runs_json")
    (root / RUNS).write_text('{"runs": [')
    log = work / "runs_json.log"
    ok = wait(writer(study(work / "runs_json", steps=(2, 4, 8, 16, 32)), model, log)) == 0
    out["damaged runs.json"] = (f"run exit {'0' if ok else 'non-zero'}, "
                                f"{len(load_runs(root))} run recorded afresh, "
                                f"{len(list(root.glob(RUNS + '.damaged-*')))} set aside")

    root = copy("study_json")
    path = root / "study.json"
    path.write_bytes(path.read_bytes()[:40])
    try:
        Store(root).read_json("study.json")
        out["truncated study.json"] = "NOT detected"
    except ConvergenceError as e:
        out["truncated study.json"] = "one line naming it" if str(path) in str(e) else str(e)

    root = copy("tamper")
    store = Store(root)
    h = str(store.load().hash.iloc[0])
    buf = io.BytesIO()
    np.savez(buf, sample=store.load_sample(h) * np.float32(1.01))
    store.sample_path(h).write_bytes(buf.getvalue())
    table = pd.read_parquet(store.table_path)
    table.loc[table.hash == h, "sample_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    table.to_parquet(store.table_path, index=False)
    found = Store(root, read_only=True).problems()
    out["consistent tamper"] = "detected" if set(found) == {h} else f"found {sorted(found)}"

    root = copy("foreign")
    rows = Store(root).load()
    (root / "parts").mkdir(exist_ok=True)
    rows.iloc[:3].assign(sample_sha256="0" * 64).to_parquet(
        root / "parts" / "99999999999999999999-1@evil-00001.parquet", index=False)
    reader = Store(root, read_only=True)
    n = len(reader.load())
    out["foreign part"] = ("detected, not read" if reader.bad_parts and n == len(rows)
                           and not reader.problems() else f"NOT detected ({reader.bad_parts})")

    root = copy("truncated")
    table = pd.read_parquet(root / "cells.parquet")
    moved = table.iloc[:4]
    table.iloc[4:].to_parquet(root / "cells.parquet", index=False)
    Store(root).append_rows(moved.to_dict("records"))
    part = next((root / "parts").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    log = work / "truncated.log"
    ok = wait(writer(study(work / "truncated"), model, log)) == 0
    ran = len(log.read_text().split()) if log.exists() else 0
    out["truncated part"] = (f"{'quarantined' if (root / 'quarantine' / part.name).exists() else 'NOT quarantined'}, "
                             f"run exit {'0' if ok else 'non-zero'}, recomputed {ran} cells "
                             f"(it held {len(moved)}), {len(Store(root).load())} cells stored")
    return out


def report_edits(work: Path, model) -> list[str]:
    """Run and print the edit cases; returns the ones that failed."""
    cases = edits(work, model, work / "reference" / "chaos")
    for name, what in cases.items():
        print(f"{name}: {what}", flush=True)
    failed = [n for n, w in cases.items() if "NOT" in w or "non-zero" in w]
    if failed:
        sys.exit(1)
    return failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only-edits", action="store_true",
                    help="only the edit and damage cases of issue 30 (no kill trials)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    model = AnalyticModel(32, 32)
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    ref_cfg = study(work / "reference")
    planned = [c.hash for c in expand(ref_cfg, model.name, model.fingerprint())]
    t0 = time.perf_counter()
    assert wait(writer(ref_cfg, model, work / "reference.log")) == 0
    full = time.perf_counter() - t0
    reference = image_digests(Store(work / "reference" / "chaos"), planned)
    print(f"reference: {len(planned)} cells in {full:.2f} s (one uninterrupted writer)")
    if args.only_edits:
        report_edits(work, model)
        return

    totals = Counter()
    killed_mid = 0
    for i in range(args.trials):
        cfg = study(work / f"trial{i}")
        log = work / f"trial{i}.log"
        pid = writer(cfg, model, log)
        time.sleep(rng.uniform(0, full))
        os.kill(pid, signal.SIGKILL)
        status = wait(pid)
        killed_mid += status == -signal.SIGKILL
        assert wait(writer(cfg, model, log)) == 0, f"trial {i}: the resumed writer failed"
        r = check(work / f"trial{i}" / "chaos", planned, reference, log)
        totals.update(r)
        if any(r[k] for k in ("lost", "dup", "damaged", "differ", "tmp")):
            print(f"trial {i}: {r}")
    print(f"kill -9 trials: {args.trials} ({killed_mid} killed mid-run), {dict(totals)}")

    # 4 concurrent writers: the same study; overlapping halves; one killed and re-launched
    scenarios = {
        "4 writers, same study": [dict()] * 4,
        "4 writers, overlapping": [dict(steps=(2, 4, 8, 16)), dict(steps=(4, 8)),
                                   dict(steps=(8, 16), samplers=("heun", "dpmpp_2m")),
                                   dict(samplers=("euler", "heun"))],
        "4 writers, one killed -9 and re-launched": [dict()] * 4,
    }
    concurrent = Counter()
    for n, (name, variants) in enumerate(scenarios.items()):
        folder = work / f"concurrent{n}"
        log = work / f"concurrent{n}.log"
        pids = [writer(study(folder, **v), model, log) for v in variants]
        if "killed" in name:
            time.sleep(rng.uniform(0.2, 0.6) * full)
            os.kill(pids[0], signal.SIGKILL)
        codes = [wait(p) for p in pids]
        if "killed" in name:
            assert wait(writer(study(folder), model, log)) == 0
        else:
            assert codes == [0] * 4, codes
        # the overlapping writers together cover the whole study only with a last full run
        assert wait(writer(study(folder), model, log)) == 0
        r = check(folder / "chaos", planned, reference, log)
        concurrent.update(r)
        print(f"{name}: {r}")
    lost = totals["lost"] + concurrent["lost"]
    dup = totals["dup"] + concurrent["dup"]
    bad = sum(totals[k] + concurrent[k] for k in ("damaged", "differ", "tmp"))
    print(f"damaged files: {bad and 'see above' or 0}, images unlike the reference: "
          f"{totals['differ'] + concurrent['differ']}, stray .tmp files: "
          f"{totals['tmp'] + concurrent['tmp']}")
    print(f"cells lost: {lost}, duplicate rows: {dup}, cells computed twice: "
          f"{totals['twice'] + concurrent['twice']}, trials: {args.trials}")
    if report_edits(work, model) or lost or dup or bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
