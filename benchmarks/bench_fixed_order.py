"""Cost of the analytic model's fixed-order denoiser against the BLAS call it replaced.

Until HASH_VERSION 4 the denoiser's two products were torch's (MKL) matrix products,
padded to 8 rows; their last bits depended on the call's size on some CPUs. This
benchmark times, in one process: single denoiser calls of 8, 32 and 128 rows (the
default study's 64x64) through each implementation (median of alternated rounds), and
the default study's generation (`run_study`, store included) with each denoiser. The
BLAS version below is that call, kept here only to measure against.

    .venv/bin/python benchmarks/bench_fixed_order.py [--rounds N] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from convergence.models.analytic import AnalyticModel


def blas_denoise(model: AnalyticModel, x: torch.Tensor, sigma: torch.Tensor,
                 cond: torch.Tensor) -> torch.Tensor:
    """The denoiser before HASH_VERSION 4: MKL products, calls padded to 8 rows."""
    n = x.shape[0]
    if n < 8:
        pad = 8 - n
        x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])])
        sigma = torch.cat([sigma, sigma[:1].expand(pad)])
        cond = torch.cat([cond, cond[:1].expand(pad, *cond.shape[1:])])
    B, (K, r) = x.shape[0], model.lam.shape
    xf = x.reshape(B, -1).to(torch.float64)
    c = (model.s2 + sigma.to(torch.float64) ** 2)[:, None]
    both = xf @ model.basis
    proj = both[:, :K * r].reshape(B, K, r) - model.muU[None]
    res_sq = (xf * xf).sum(1, keepdim=True) - 2 * both[:, K * r:] + model.mu_sq[None]
    full = model.lam[None] + c[..., None]
    quad = (res_sq - (proj**2).sum(2)) / c + (proj**2 / full).sum(2)
    logdet = (model.d - r) * torch.log(c) + torch.log(full).sum(2)
    resp = torch.softmax(cond - 0.5 * (quad + logdet), dim=1)
    gain_iso = model.s2 / c
    gain_low = (model.lam[None] + model.s2) / full - gain_iso[..., None]
    coef = torch.cat([(resp[..., None] * gain_low * proj).reshape(B, -1),
                      (1 - gain_iso) * resp], dim=1)
    out = (gain_iso * xf).addmm_(coef, model.basis.T)
    return out[:n].reshape(x[:n].shape).to(x.dtype)


def time_calls(model: AnalyticModel, rows: int, rounds: int) -> tuple[float, float]:
    """Median seconds of one call of ``rows`` rows: (fixed order, BLAS), alternated."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 3, model.height, model.width, generator=g, dtype=torch.float64) * 3
    sigma = torch.rand(rows, generator=g, dtype=torch.float64) * 5 + 0.05
    cond = model.encode_prompts(["p"] * rows, ["food", "people"] * (rows // 2)).cond
    new, old = [], []
    for _ in range(rounds):
        for fn, seconds in ((model.denoise, new), (lambda *a: blas_denoise(model, *a), old)):
            start = time.perf_counter()
            fn(x, sigma, cond)
            seconds.append(time.perf_counter() - start)
    return statistics.median(new[1:]), statistics.median(old[1:])


def time_study(use_blas: bool) -> tuple[float, int]:
    """Seconds of the default study's generation and its cells, with either denoiser."""
    from hydra import compose, initialize_config_dir

    from convergence.config import CONF_DIR, register_configs, to_config
    from convergence.run.runner import run_study
    register_configs()
    real = AnalyticModel.denoise
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = to_config(compose(config_name="config",
                                    overrides=[f"results_dir={tmp}", "progress=false"]))
        if use_blas:
            AnalyticModel.denoise = blas_denoise
        try:
            start = time.perf_counter()
            summary = run_study(cfg)
            return time.perf_counter() - start, summary.ran
        finally:
            AnalyticModel.denoise = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path)
    opts = ap.parse_args()
    model = AnalyticModel(64, 64)
    lines = [f"$ .venv/bin/python benchmarks/bench_fixed_order.py {' '.join(sys.argv[1:])}",
             f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__} ({torch.get_num_threads()} threads, ATen "
             f"{torch.backends.cpu.get_cpu_capability()}), load average "
             f"{os.getloadavg()[0]:.1f} at the start",
             "# one denoiser call, 64x64, median of alternated rounds:",
             "rows   fixed order   BLAS (before)   fixed/BLAS"]
    for rows in (8, 32, 128):
        new, old = time_calls(model, rows, opts.rounds)
        lines.append(f"{rows:4d}   {new * 1e3:8.2f} ms   {old * 1e3:10.2f} ms   {new / old:9.2f}")
    fixed, cells = time_study(use_blas=False)
    blas, _ = time_study(use_blas=True)
    lines += [f"# the default study's generation ({cells} cells, store included), one run each:",
              f"fixed order {fixed:6.1f} s, BLAS (before) {blas:6.1f} s, fixed/BLAS "
              f"{fixed / blas:.2f}"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if opts.out:
        opts.out.write_text(text)


if __name__ == "__main__":
    main()
