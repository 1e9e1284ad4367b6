"""Where `convergence run`'s CPU time goes: the model call, VAE decoding, prompt encoding,
the store's writes, and the rest (sampler maths in the job threads, gathering, claims).

    python benchmarks/run_breakdown.py [--out FILE] [overrides...]

for example ``study=invoke_guide model=diffusers model.path=/tmp/batching-small width=64
height=64 threads=1``. One ``run_study`` into a temporary folder, in this process, with
each part's CPU time read by ``time.thread_time`` in the thread that runs it (the model
calls in the gatherer's thread, decoding and encoding in the job threads, writes in the
store's writer thread), and the process's CPU time, system time and minor page faults
from ``getrusage``. CPU seconds, not wall time: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace

import convergence.run.runner as runner
from convergence.config import compose_config
from convergence.core.store import Store
from convergence.models import build_model

MODEL, DECODE, ENCODE, STORE = ("model call (model.denoise)", "VAE decode",
                                "prompt encode", "store_rows (writer thread)")


def timed(owner, name: str, label: str, acc: Counter, lock: threading.Lock) -> None:
    """Replace ``owner.name`` by a wrapper adding its thread's CPU time to ``acc[label]``."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            with lock:
                acc[label] += time.thread_time() - start

    setattr(owner, name, wrapper)


def breakdown(overrides: list[str]) -> list[str]:
    cfg = compose_config(overrides)
    model = build_model(cfg.model, cfg.width, cfg.height)
    acc: Counter = Counter()
    lock = threading.Lock()
    for owner, name, label in ((model, "denoise", MODEL), (model, "decode_both", DECODE),
                               (model, "encode_prompts", ENCODE),
                               (runner, "store_rows", STORE)):
        timed(owner, name, label, acc, lock)
    for name in ("write_image", "write_sample", "write_decoded", "append_rows"):
        timed(Store, name, f"  of which Store.{name}", acc, lock)
    with tempfile.TemporaryDirectory(prefix="run-breakdown-") as tmp:
        before, cpu = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
        summary = runner.run_study(replace(cfg, results_dir=tmp, progress=False), model)
        cpu, after = time.process_time() - cpu, resource.getrusage(resource.RUSAGE_SELF)
        run = runner.load_runs(summary.store.root)[-1]
    rows = run["model_rows"]
    lines = [f"# {cfg.name}: {len(summary.cells)} cells, {rows} model rows in "
             f"{run['model_calls']} calls ({run['rows_per_call']:.1f} rows per call); "
             f"load average {os.getloadavg()[0]:.1f} at the end",
             f"process CPU {cpu:.2f} s (system {after.ru_stime - before.ru_stime:.2f} s, "
             f"{after.ru_minflt - before.ru_minflt} minor page faults) = "
             f"{1e3 * cpu / rows:.3f} ms per model row; the model call alone "
             f"{1e3 * acc[MODEL] / rows:.3f} ms per row"]
    parts = [MODEL, DECODE, ENCODE, STORE]
    for label in [*parts, *sorted(k for k in acc if k not in parts)]:
        lines.append(f"{acc[label]:8.2f} s {100 * acc[label] / cpu:5.1f} %  {label}")
    rest = cpu - sum(acc[k] for k in parts)
    lines.append(f"{rest:8.2f} s {100 * rest / cpu:5.1f} %  rest (sampler maths in the job "
                 "threads, gathering, claims, compaction)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the report to this file")
    args, overrides = ap.parse_known_args()
    text = "\n".join([f"$ python benchmarks/run_breakdown.py {' '.join(sys.argv[1:])}",
                      *breakdown(overrides)])
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
