"""Cost of `convergence analyze` against `convergence run` on the default study, in one run.

Runs both commands as a user would (subprocesses with torch's default thread count, or
``--threads N`` on a shared machine), into a fresh results folder, and prints the wall time
of each and their ratio (target: analyze at most half of run), then `convergence report`. A second `analyze` shows the cost once the exact ODE
solutions are cached. With ``--keep DIR`` the study stays in DIR (its tables are what
results/measured/default_*.csv record).

    .venv/bin/python benchmarks/bench_analyze.py [--threads N] [--keep DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: CPU seconds (user + system) of each command, in the order they ran
CPU: list[float] = []


def timed(args: list[str], env: dict) -> tuple[float, str]:
    """Wall seconds and stdout of one command; its CPU seconds go to :data:`CPU`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "convergence.cli", *args], env=env,
                       capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if r.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return seconds, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", type=Path, help="results folder to keep (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="also write the report to this file")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    opts = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        results = opts.keep or Path(tmp)
        common = [f"results_dir={results}", *([f"threads={opts.threads}"] if opts.threads else [])]
        t_run, out_run = timed(["run", *common, "progress=false"], env)
        # progress on: the phase lines (stdout) show where analyze spends its time
        t_an, out_an = timed(["analyze", *common], env)
        t_an2, _ = timed(["analyze", *common, "progress=false"], env)
        t_rep, _ = timed(["report", *common, "progress=false"], env)
    threads = opts.threads or f"default ({os.cpu_count()} cores)"
    lines = [
        f"$ .venv/bin/python benchmarks/bench_analyze.py {' '.join(sys.argv[1:])}",
        "# default study (960 cells, 64x64, analytic model), threads "
        f"{threads}, load average {load:.1f} at the start; wall seconds of each command "
        "(subprocess, imports included)",
        f"run:                        {t_run:7.1f} s   CPU {CPU[0]:6.1f} s   "
        f"({out_run.strip().splitlines()[-1]})",
        f"analyze (first):            {t_an:7.1f} s   CPU {CPU[1]:6.1f} s   ratio analyze/run = "
        f"{t_an / t_run:.2f} wall, {CPU[1] / CPU[0]:.2f} CPU",
        f"analyze (exact ODE cached): {t_an2:7.1f} s   CPU {CPU[2]:6.1f} s   ratio analyze/run = "
        f"{t_an2 / t_run:.2f} wall, {CPU[2] / CPU[0]:.2f} CPU",
        f"report:                     {t_rep:7.1f} s   CPU {CPU[3]:6.1f} s",
        f"run + analyze + report:     {t_run + t_an + t_rep:7.1f} s",
        "",
        "analyze's output (first run):",
        out_an.rstrip(),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        opts.out.write_text(text)


if __name__ == "__main__":
    main()
