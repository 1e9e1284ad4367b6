"""Empirical orders of the ComfyUI samplers (samplers/comfy.py) on the analytic model.

Karras schedule, CFG 1, 32x32, seeds 1 and 2, against the exact limit D(x(sigma_min))
(``exact-denoised``). Prints per sampler the NFE, the rmse at each step count and the
local slope of each doubling, log(e_n / e_2n) / log(nfe_2n / nfe_n): an order is only
read off where successive slopes agree. SDE solvers run with their noise switched off
(eta = 0; er_sde with phi = sigma and s_noise = 0), which makes them ODE solvers.

    .venv/bin/python benchmarks/comfy_orders.py [--steps 4,8,...,512] [--out FILE]

``--spread`` instead samples 32 seeds (food, CFG 1) with every stochastic sampler at 16 and
64 steps and prints the mean over pixels of the standard deviation across seeds, beside
k-diffusion's euler_ancestral and dpmpp_2m_sde and the ODE (dpmpp_2m): samplers
of one SDE agree, a wrong noise level would not.

``--stability`` instead runs every sampler at CFG 7.5 (topic food, seed 1) and prints the
rmse of its 6-, 12- and 24-step results to its own 96-step result: where the guided
denoiser is stiff, extrapolating methods can blow up at few steps.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from convergence.analysis.metrics import rmse
from convergence.analysis.references import denoise
from convergence.models.analytic import AnalyticModel, exact_solution
from convergence.run.plan import Cell
from convergence.run.runner import cell_metadata, sample_batch
from convergence.samplers.spec import available_samplers

SEEDS = [1, 2]


def phi_sigma(lam):
    """ER-SDE's noise scale function of the probability-flow ODE (phi = lambda = sigma)."""
    return lam


#: options that turn a stochastic sampler into its deterministic (ODE) limit
ODE_OPTIONS = {"er_sde": {"noise_scaler": phi_sigma, "s_noise": 0.0}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="4,8,16,32,64,128,256,512")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--stability", action="store_true")
    ap.add_argument("--spread", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.spread:
        lines = spread()
    else:
        lines = stability() if args.stability else orders([int(s) for s in args.steps.split(",")])
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def _comfy() -> dict:
    return {n: s for n, s in available_samplers().items() if s.family == "comfyui"}


def spread(n_seeds: int = 32) -> list[str]:
    model = AnalyticModel(32, 32)
    lines = [f"# comfy_orders --spread: analytic 32x32, karras, cfg 1, food, {n_seeds} seeds",
             "sampler | mean std across seeds at 16, 64 steps"]
    names = ["dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde",
             *[n for n, s in _comfy().items() if s.stochastic]]
    for name in names:
        stds = []
        for steps in (16, 64):
            cells = [Cell("analytic", "h", "food", "p", 1000 + i, name, "karras", steps, 1.0,
                          32, 32) for i in range(n_seeds)]
            x = sample_batch(model, cells).samples.numpy().reshape(n_seeds, -1)
            stds.append(float(x.std(0).mean()))
        lines.append(f"{name} | {stds[0]:.4f} {stds[1]:.4f}")
        print(lines[-1], flush=True)
    return lines


def stability() -> list[str]:
    model = AnalyticModel(32, 32)
    lines = ["# comfy_orders --stability: analytic 32x32, karras, cfg 7.5, food, seed 1",
             "sampler | rmse to own 96-step result at 6, 12, 24 steps"]
    for name in ["dpmpp_2m", "lms", "dpmpp_3m_sde", *_comfy()]:
        out = {n: sample_batch(model, [Cell("analytic", "h", "food", "p", 1, name, "karras", n,
                                            7.5, 32, 32)]).samples.numpy()
               for n in (6, 12, 24, 96)}
        lines.append(f"{name} | " + " ".join(f"{rmse(out[n], out[96])[0]:.3g}"
                                              for n in (6, 12, 24)))
        print(lines[-1], flush=True)
    return lines


def orders(steps: list[int]) -> list[str]:
    model = AnalyticModel(32, 32)
    span = cell_metadata(model, "euler", "karras", steps[0])
    s0, smin = span["sigma_start"], span["sigma_min"]
    x0 = model.initial_noise(SEEDS, 32, 32).double() * s0
    cond = model.encode_prompts(["p"] * len(SEEDS), ["food"] * len(SEEDS))
    limit = denoise(model, exact_solution(model, x0, s0, smin, cond, 1.0), smin, cond,
                     1.0).numpy()
    lines = [f"# comfy_orders: analytic 32x32, karras, cfg 1, seeds {SEEDS}, vs exact-denoised",
             "sampler (claim) | NFE | rmse (median over seeds) | local slopes per doubling"]
    for name, spec in _comfy().items():
        options = ODE_OPTIONS.get(name, {"eta": 0.0} if spec.stochastic else {})
        nfe, err = [], []
        for n in steps:
            cells = [Cell("analytic", "h", "food", "p", s, name, "karras", n, 1.0, 32, 32)
                     for s in SEEDS]
            r = sample_batch(model, cells, options)
            nfe.append(r.nfe)
            err.append(float(np.median(rmse(r.samples.numpy(), limit))))
        slopes = [math.log(err[i] / err[i + 1]) / math.log(nfe[i + 1] / nfe[i])
                  for i in range(len(err) - 1)]
        claim = "noise off" if spec.stochastic else ("no claim" if spec.order is None else spec.order)
        label = f"{name} ({claim})"
        lines.append(f"{label} | {nfe} | {' '.join(f'{e:.2e}' for e in err)} | "
                     + " ".join(f"{v:.2f}" for v in slopes))
        print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
