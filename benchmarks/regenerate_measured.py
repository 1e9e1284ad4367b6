"""Regenerate the analysis-derived files of results/measured/ from the current code, each
with the command that made it written in it.

    .venv/bin/python benchmarks/regenerate_measured.py [--work DIR] [--only PART ...]

Parts (all by default):
- ``default``: the default study (`convergence run` + `analyze`, threads=1) ->
  default_{claims,keypoints,keypoints_seed,rates,limits,calibration}.csv;
- ``orders``: the README's orders studies (Karras and discrete, CFG 1, 32x32, 2 seeds,
  steps 12-96) -> orders_{karras,discrete}_{rates,limits}.csv;
- ``order_rule``: benchmarks/order_rule.py on the stored check curves and those three
  studies -> order_rule.txt (needs ``default`` and ``orders`` in the same --work);
- ``sampler_table``: benchmarks/sampler_table.py -> sampler_table.md (`convergence check`
  of every registered sampler: the slow part, about 10 minutes on 2 cores).

Each CSV's first line is ``# made by: <command>`` (read them with ``skiprows=1``: the
claims' anchors hold '#').
The studies stay in --work (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
OUT = ROOT / "results" / "measured"
PARTS = ("default", "orders", "order_rule", "sampler_table")
DEFAULT_TABLES = ("claims", "keypoints", "keypoints_seed", "rates", "limits", "calibration")
ORDERS_ARGS = ("samplers=[euler,heun,dpm_2,dpmpp_2m,lms]", "steps=[12,24,48,96]", "cfg=[1.0]",
               "width=32", "height=32", "prompts=[{topic:food,text:burger,seed:1}]",
               "seeds_per_prompt=2", "analysis.references=[highest,exact]",
               "analysis.rate_min_steps=12", "threads=1", "progress=false")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "convergence.cli", *args], env=ENV,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"convergence {' '.join(args)} failed:\n{r.stderr[-3000:]}")


def copy_table(src: Path, dst: Path, command: str) -> None:
    """``src`` (a CSV the analysis wrote) to ``dst`` under a line naming the command."""
    dst.write_text(f"# made by: {command}\n" + src.read_text())
    print(f"-> {dst.relative_to(ROOT)}", flush=True)


def default(work: Path, command: str) -> None:
    common = (f"results_dir={work}", "threads=1", "progress=false")
    cli("run", *common)
    cli("analyze", *common)
    for t in DEFAULT_TABLES:
        copy_table(work / "default" / f"{t}.csv", OUT / f"default_{t}.csv", command)


def orders(work: Path, command: str) -> None:
    for s in ("karras", "discrete"):
        args = (f"name=orders_{s}", f"schedules=[{s}]", *ORDERS_ARGS, f"results_dir={work}")
        cli("run", *args)
        cli("analyze", *args)
        for t in ("rates", "limits"):
            copy_table(work / f"orders_{s}" / f"{t}.csv", OUT / f"orders_{s}_{t}.csv", command)


def script(name: str, *args: str) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], env=ENV,
                       cwd=ROOT, text=True, capture_output=True)
    if r.returncode:
        raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
    print(r.stdout.strip().splitlines()[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, help="where the studies are run and kept")
    ap.add_argument("--only", action="append", choices=PARTS, help="a part (repeatable)")
    opts = ap.parse_args()
    parts = opts.only or list(PARTS)
    command = ".venv/bin/python benchmarks/regenerate_measured.py " + " ".join(
        f"--only {p}" for p in parts)
    tmp = None if opts.work else tempfile.mkdtemp(prefix="regenerate-measured-")
    work = opts.work or Path(tmp)
    work.mkdir(parents=True, exist_ok=True)
    try:
        if "default" in parts:
            default(work, command)
        if "orders" in parts:
            orders(work, command)
        if "order_rule" in parts:
            script("order_rule.py", f"--made-by={command}", *(f"--study={work / n}" for n in
                                      ("orders_karras", "orders_discrete", "default")
                                      if (work / n / "distances.parquet").exists()))
        if "sampler_table" in parts:
            script("sampler_table.py", f"--made-by={command}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
