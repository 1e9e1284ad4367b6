"""Time `convergence run` of one study under two versions of the harness, alternated in
one invocation (a shared, noisy machine: compare ratios from one run only), and check
that both store the same cells: the same float samples (to the bit) and PNGs. With
``--analyze``, each version also analyses its first store, and every analysis table must
be equal (all columns but the seconds the two runs spent).

    python benchmarks/run_ab.py [--base REV] [--revert COMMIT ...] [--rounds N] [--analyze] [--out FILE] [overrides...]

The base version is ``REV``'s ``src`` (``git archive``; default ``HEAD``) with the changes
to ``src`` of the ``--revert`` commits undone; the other version is this checkout's
``src``. Each run is a fresh process (``python -m convergence.cli run ... progress=false``)
into a fresh results folder; the report gives, per run, the wall time of the process,
its CPU time (user + system), the seconds of ``run_study`` and inside the model, model
calls and rows per call (``runs.json``), then the medians per version and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def export_src(rev: str, dest: Path, revert: list[str]) -> Path:
    """``rev``'s ``src`` folder, unpacked under ``dest``, with the changes to ``src`` of
    the commits ``revert`` undone (a version that differs from ``rev`` by just those)."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    for commit in reversed(revert):
        diff = subprocess.run(["git", "-C", str(REPO), "diff", f"{commit}^", commit, "--", "src"],
                              check=True, capture_output=True).stdout
        subprocess.run(["git", "apply", "-R"], input=diff, cwd=dest, check=True)
    return dest / "src"


def run_once(src: Path, results: Path, overrides: list[str]) -> dict:
    """One `convergence run` in a fresh process importing ``src``; its timings."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "convergence.cli", "run", *overrides,
                    f"results_dir={results}", "progress=false"], env=env, check=True,
                   capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    study = next(p for p in results.iterdir() if (p / "runs.json").exists())
    run = json.loads((study / "runs.json").read_text())["runs"][-1]
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "run_study": run["seconds"], "model": run["model_seconds"],
            "calls": run["model_calls"], "rows_per_call": run["rows_per_call"], "study": study}


def same_cells(a: Path, b: Path) -> int:
    """Number of cells, after checking both stores hold the same cells, samples and PNGs."""
    from convergence.core.store import Store
    sa, sb = Store(a), Store(b)
    ha, hb = set(sa.load().hash), set(sb.load().hash)
    assert ha == hb, f"different cells: {len(ha ^ hb)} differ"
    for h in ha:
        assert np.array_equal(sa.load_sample(h), sb.load_sample(h)), f"sample {h} differs"
        assert sa.load_image(h).tobytes() == sb.load_image(h).tobytes(), f"image {h} differs"
    return len(ha)


#: what `convergence analyze` writes (analysis/tables.py FILES), and the columns that hold
#: the seconds each version's run spent (they differ by design)
TABLES = ("distances.parquet", "keypoints_seed.csv", "keypoints.csv", "rates.csv", "limits.csv",
          "claims.csv", "calibration.csv")
TIMINGS = ("seconds",)


def analyze(src: Path, study: Path, overrides: list[str]) -> None:
    """`convergence analyze` of ``study`` in a fresh process importing ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run([sys.executable, "-m", "convergence.cli", "analyze", *overrides,
                    f"results_dir={study.parent}", "progress=false"], env=env, check=True,
                   capture_output=True)


def same_tables(a: Path, b: Path) -> list[str]:
    """One line per analysis table: equal, or the columns that differ."""
    import pandas as pd
    lines = []
    for name in TABLES:
        read = pd.read_parquet if name.endswith(".parquet") else pd.read_csv
        ta, tb = read(a / name), read(b / name)
        keep = [c for c in ta.columns if c not in TIMINGS]
        if list(ta.columns) != list(tb.columns) or len(ta) != len(tb):
            lines.append(f"{name}: DIFFERENT shape or columns")
            continue
        bad = [c for c in keep if not ta[c].equals(tb[c])]
        skipped = [c for c in ta.columns if c in TIMINGS]
        line = f"{name}: {len(ta)} rows, " + (f"DIFFERENT in {bad}" if bad else "equal")
        lines.append(line + (f" (not compared: {', '.join(skipped)})" if skipped else ""))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="HEAD", help="git revision of the version to compare with")
    ap.add_argument("--revert", nargs="*", default=[], help="commits whose src changes the base undoes")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each version, alternated")
    ap.add_argument("--analyze", action="store_true",
                    help="also analyse each version's first store and compare the tables")
    ap.add_argument("--out", help="also write the report to this file")
    args, overrides = ap.parse_known_args()
    sys.path.insert(0, str(REPO / "src"))
    lines = [f"$ python benchmarks/run_ab.py {' '.join(sys.argv[1:])}",
             f"# base {args.base} = {subprocess.check_output(['git', '-C', str(REPO), 'rev-parse', '--short', args.base], text=True).strip()}"
             + (f" with {', '.join(args.revert)} reverted" if args.revert else "") + ", "
             f"new = this checkout ({subprocess.check_output(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'], text=True).strip()}); "
             f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"]
    with tempfile.TemporaryDirectory(prefix="convergence-ab-") as tmp:
        tmp = Path(tmp)
        versions = {"base": export_src(args.base, tmp / "base", args.revert), "new": REPO / "src"}
        got: dict[str, list[dict]] = {v: [] for v in versions}
        for r in range(args.rounds):
            for v in (("base", "new") if r % 2 == 0 else ("new", "base")):
                res = run_once(versions[v], tmp / f"{v}-{r}", overrides)
                got[v].append(res)
                lines.append(f"round {r} {v:4}: wall {res['wall']:6.1f} s, CPU {res['cpu']:6.1f} s, "
                             f"run_study {res['run_study']:6.1f} s, model {res['model']:6.1f} s, "
                             f"{res['calls']} calls, {res['rows_per_call']:.1f} rows/call")
                print(lines[-1], flush=True)
        n = same_cells(got["base"][0]["study"], got["new"][0]["study"])
        lines.append(f"same {n} cells in both versions: samples bit-identical, PNGs identical")
        if args.analyze:
            for v in versions:
                analyze(versions[v], got[v][0]["study"], overrides)
            lines += ["analysis tables, base vs new:", *same_tables(got["base"][0]["study"],
                                                                   got["new"][0]["study"])]
        med = {v: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "run_study", "model")}
               for v, rs in got.items()}
        for k in ("wall", "cpu", "run_study", "model"):
            lines.append(f"median {k:9}: base {med['base'][k]:6.1f} s, new {med['new'][k]:6.1f} s, "
                         f"new/base = {med['new'][k] / med['base'][k]:.2f}")
    text = "\n".join(lines)
    print("\n".join(lines[-5:]))
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
