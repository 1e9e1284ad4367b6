"""Speed of each sampler on the embedded analytic model, as ratios measured in one run.

Prints, per sampler: NFE per step, seconds per image, it/s, the ratio of its time per
step to euler's (the guide's it/s table and ComfyUI's "how much slower" column), and
the share of time spent inside the model. Then the speed-up from batching cells across
prompts and seeds (one batch of N cells vs N single-cell runs).

    .venv/bin/python benchmarks/bench_samplers.py [--steps 20] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from convergence.models.analytic import AnalyticModel
from convergence.run.plan import Cell
from convergence.run.runner import sample_batch

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "ddim", "plms",
            "dpmpp_2m", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde",
            "dpm_fast"]
TOPICS = ["anime", "nature", "food", "animals", "people"]


def cells(sampler: str, steps: int, n: int, size: int) -> list[Cell]:
    return [Cell("analytic", "bench", TOPICS[i % 5], "p", 1000 + i, sampler, "karras", steps,
                 7.5, size, size) for i in range(n)]


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = AnalyticModel(args.size, args.size)
    lines = [f"# bench_samplers: analytic model {args.size}x{args.size}, {args.steps} steps, "
             f"batch {args.batch}, cfg 7.5, karras, {args.threads} thread(s), best of {args.repeats}",
             f"{'sampler':20s} {'NFE/step':>8s} {'s/image':>9s} {'it/s':>8s} {'x euler':>8s} {'model%':>7s}"]
    rows = {}
    for name in SAMPLERS:
        batch = cells(name, args.steps, args.batch, args.size)
        res = sample_batch(model, batch)  # warm-up, and NFE/model share
        t = best_of(lambda b=batch: sample_batch(model, b), args.repeats)
        rows[name] = (res.nfe / args.steps, t / args.batch, res.model_seconds / res.seconds)
    euler_step = rows["euler"][1] / args.steps
    for name, (nfe_step, s_img, model_share) in rows.items():
        per_step = s_img / args.steps
        lines.append(f"{name:20s} {nfe_step:8.2f} {s_img:9.4f} {1 / per_step:8.1f} "
                     f"{per_step / euler_step:8.2f} {100 * model_share:6.0f}%")
    batch = cells("euler", args.steps, args.batch, args.size)
    batched = best_of(lambda: sample_batch(model, batch), args.repeats)
    single = best_of(lambda: [sample_batch(model, [c]) for c in batch], args.repeats)
    lines.append(f"batching {args.batch} cells in one call: {single / batched:.2f}x faster than "
                 f"{args.batch} single-cell runs ({statistics.fmean([single, batched]):.3f}s mean)")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
