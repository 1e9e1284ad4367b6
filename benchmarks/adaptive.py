"""Adaptive key-point search against a dense sweep of every step count, on the embedded model.

Runs the same small study twice, into two fresh stores: (1) dense, every step count from 1 to
``--top``, key points by the analysis (``compute_distances`` + ``seed_points``,
change to the next step count = to ``s + 1``); (2) ``search=adaptive`` over the coarse sweep
1, 2, 4, ..., ``--top``. Prints, per curve (prompt × seed × sampler), whether each of the three
key points agrees within ±1 step (not reached = not reached), then the share of curves where
all three agree and the adaptive NFE as a fraction of the dense NFE (NFE counted by the
runner, per cell, summed over the cells each search ran).

    .venv/bin/python benchmarks/adaptive.py [--size 32] [--top 100] [--seeds 2] \
        [--samplers euler,heun,dpmpp_2m,lms,euler_ancestral] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from convergence.analysis.adaptive import KeyPointJudge
from convergence.analysis.distances import compute_distances
from convergence.analysis.inputs import load_cells
from convergence.analysis.keypoints import seed_points
from convergence.config import to_config
from convergence.models.analytic import AnalyticModel
from convergence.run.adaptive import run_adaptive
from convergence.run.runner import run_study

PROMPTS = [{"topic": "food", "seed": 4053222918, "text": "a hamburger with a bowl of french fries"},
           {"topic": "people", "seed": 2131956332, "text": "Ultra realistic photo, blue eyes"}]
KEY = ["topic", "seed", "sampler"]


def dense_points(cfg, model) -> tuple[pd.DataFrame, float]:
    """Per-curve key points of a dense sweep by the analysis' own stages (the
    keypoints_seed table), and the sweep's total NFE."""
    run_study(cfg, model)
    a = replace(cfg.analysis, references=["highest"], metrics=[cfg.analysis.metric],
                image_references=[])
    store, cells = load_cells(cfg)
    samples = np.stack([store.load_sample(h) for h in cells.hash]).astype(np.float64)
    dist, _ = compute_distances(a, store, cells, samples)
    return seed_points(a, dist, cells), float(cells.nfe.sum())


def coarse_steps(top: int) -> list[int]:
    steps, s = [], 1
    while s < top:
        steps.append(s)
        s *= 2
    return [*steps, top]


def agree(a, b) -> bool:
    na, nb = a is None or pd.isna(a), b is None or pd.isna(b)
    return (na and nb) or (not na and not nb and abs(float(a) - float(b)) <= 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    ap.add_argument("--samplers", default="euler,heun,dpmpp_2m,lms,euler_ancestral")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="adaptive-bench-"))
    base = {"name": "bench", "prompts": PROMPTS, "seeds_per_prompt": args.seeds,
            "samplers": args.samplers.split(","), "cfg": [7.5], "width": args.size,
            "height": args.size, "batch_size": 16, "progress": False}
    model = AnalyticModel(args.size, args.size)
    t = time.perf_counter()
    dense_cfg = to_config({**base, "steps": list(range(1, args.top + 1)),
                           "results_dir": str(tmp / "dense")})
    dense, dense_nfe = dense_points(dense_cfg, model)
    t_dense = time.perf_counter() - t
    t = time.perf_counter()
    ad_cfg = to_config({**base, "steps": coarse_steps(args.top), "search": "adaptive",
                        "results_dir": str(tmp / "adaptive")})
    summary = run_adaptive(ad_cfg, KeyPointJudge(ad_cfg.analysis), model)
    adaptive = pd.read_csv(summary.store.root / "keypoints_adaptive.csv")
    adaptive_nfe = float(summary.store.load().nfe.sum())
    t_adaptive = time.perf_counter() - t

    lines = [f"command: {' '.join(['benchmarks/adaptive.py', *(argv or sys.argv[1:])])}",
             f"model: analytic {args.size}x{args.size}; key points by the analysis' own "
             f"measures (curves: {ad_cfg.analysis.metric}); "
             f"coarse sweep {coarse_steps(args.top)}; dense sweep 1..{args.top}",
             "", f"{'topic':8s} {'seed':>10s} {'sampler':16s} "
             + " ".join(f"{p + ' d/a':>16s}" for p in ("indicative", "coherent", "converged"))
             + "  agree"]
    n_agree = n = 0
    by_sampler: dict[str, list[bool]] = {}
    for key, g in dense.groupby(KEY, sort=False):
        d = g.set_index("point").steps
        a = adaptive[(adaptive.topic == key[0]) & (adaptive.seed == key[1])
                     & (adaptive.sampler == key[2])].set_index("point").steps
        ok = all(agree(d.get(p), a.get(p)) for p in ("indicative", "coherent", "converged"))
        cols = " ".join(f"{_fmt(d.get(p)):>7s}/{_fmt(a.get(p)):<8s}"
                        for p in ("indicative", "coherent", "converged"))
        lines.append(f"{key[0]:8s} {key[1]:>10d} {key[2]:16s} {cols}  {'yes' if ok else 'NO'}")
        n += 1
        n_agree += ok
        by_sampler.setdefault(key[2], []).append(ok)
    lines += ["", "per sampler: " + ", ".join(f"{s} {sum(v)}/{len(v)}" for s, v in by_sampler.items()),
              f"curves whose three key points agree within ±1 step: {n_agree}/{n} = "
              f"{100 * n_agree / n:.1f} % (target >= 95 %)",
              f"adaptive NFE / dense NFE: {adaptive_nfe:.0f} / {dense_nfe:.0f} = "
              f"{100 * adaptive_nfe / dense_nfe:.1f} % (target <= 15 %)",
              f"wall time (one run, this machine): dense {t_dense:.0f} s, adaptive {t_adaptive:.0f} s "
              f"= {t_adaptive / t_dense:.2f} of dense"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(int(v))


if __name__ == "__main__":
    main()
