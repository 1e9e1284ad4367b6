"""Convergence rates: the fit recovers known exponents, and on the analytic model the
measured orders against the exact ODE limit match theory (Karras schedule)."""

import math

import numpy as np
import pytest
import torch

from convergence.analysis.keypoints import CurveMeasures, curve_points, forward_changes
from convergence.analysis.metrics import rmse
from convergence.analysis.rates import asymptotic_fit, bootstrap_b, fit_power, local_slopes
from convergence.analysis.references import denoise
from convergence.config.schema import AnalysisConfig
from convergence.models.analytic import exact_solution
from convergence.run.plan import Cell
from convergence.run.runner import cell_metadata, sample_batch


def test_fit_recovers_exponent_with_and_without_reference():
    x = np.array([10, 20, 40, 80, 160.0])
    a, b = fit_power(x, 3.0 * x**-1.5)
    assert abs(b + 1.5) < 1e-3 and abs(a - 3.0) < 1e-2
    a, b = fit_power(x[:-1], 3.0 * (x[:-1] ** -1.5 - 160.0**-1.5), x_ref=160.0)
    assert abs(b + 1.5) < 1e-3
    rng = np.random.default_rng(0)
    units = [(x, 2.0 * x**-1.0 * np.exp(0.05 * rng.standard_normal(5))) for _ in range(4)]
    _, b, lo, hi = bootstrap_b(units, math.inf, 50)
    assert lo <= b <= hi and abs(b + 1) < 0.1


def test_local_slopes_with_and_without_reference():
    x = np.array([10, 20, 30, 40, 80.0])  # ladder: 80, 40, 20, 10 (30 is too close to 40/20)
    lx, sl = local_slopes(x, 2.0 * x**-1.5)
    assert list(lx) == [10, 20, 40, 80] and np.allclose(sl, 1.5)
    lx, sl = local_slopes(x[:-1], 2.0 * (x[:-1] ** -1.5 - 80.0**-1.5), x_ref=80.0)
    assert np.allclose(sl, 1.5, atol=1e-4)


def test_order_refused_where_local_slopes_disagree():
    x = np.array([12, 24, 48, 96, 192.0])
    ok = asymptotic_fit([(x, 3.0 * x**-2.0)], math.inf)
    # fitted over the last two doublings, the span of the slopes the rule compares
    assert ok["asymptotic"] and abs(ok["order"] - 2) < 1e-3 and (ok["x_lo"], ok["x_hi"]) == (48, 192)
    # the euler-on-discrete curve (local slopes 2.0, 3.2, 5.6, 0.37, 0.64, 1.20,
    # 0.97 as steps double) is refused whole and at every shorter top of the sweep
    slopes = [2.0, 3.2, 5.6, 0.37, 0.64, 1.20, 0.97]
    xs = 6.0 * 2.0 ** np.arange(len(slopes) + 1)
    d = 1e-2 * np.cumprod([1.0] + [2**-s for s in slopes])
    for top in range(3, len(xs) + 1):
        bad = asymptotic_fit([(xs[:top], d[:top])], math.inf)
        assert not bad["asymptotic"] and math.isnan(bad["order"]) and math.isnan(bad["b"]), top
    assert bad["slopes"] == "2.00,3.20,5.60,0.37,0.64,1.20,0.97" and not math.isnan(bad["order_fit"])
    flat = asymptotic_fit([(x, 0.1 + 0 * x)], math.inf)  # a plateau has no order
    assert not flat["asymptotic"]


SEEDS = [1, 2]
STEPS = [12, 24, 48]


def _run(model, sampler, steps):
    cells = [Cell("analytic", "h", "food", "p", s, sampler, "karras", steps, 1.0, 32, 32)
             for s in SEEDS]
    return sample_batch(model, cells)


@pytest.fixture(scope="module")
def limits(model32):
    m = cell_metadata(model32, "euler", "karras", STEPS[0])
    s0, smin = m["sigma_start"], m["sigma_min"]
    x0 = model32.initial_noise(SEEDS, 32, 32).double() * s0
    cond = model32.encode_prompts(["p"] * 2, ["food"] * 2)
    x_min = exact_solution(model32, x0, s0, smin, cond, 1.0)
    zero = exact_solution(model32, x_min, smin, 0.0, cond, 1.0)
    return {"denoised": denoise(model32, x_min, smin, cond, 1.0).numpy(), "zero": zero.numpy()}


@pytest.mark.parametrize("sampler,order", [("euler", 1), ("heun", 2), ("dpm_2", 2), ("dpmpp_2m", 2)])
def test_measured_order_matches_theory(model32, limits, sampler, order):
    """Karras runs at CFG 1, steps 12-96: the order is ACCEPTED (rates.order_accepted: the
    last two local slopes and the fit agree within 0.1) and within 0.25 of theory
    (measured: 1.01, 2.05, 2.04, 2.09; results/measured/order_rule.txt)."""
    units = [[], []]
    for n in [*STEPS, 96]:
        r = _run(model32, sampler, n)  # float64 in memory (the store keeps fp32)
        err = rmse(r.samples.numpy(), limits["denoised"])
        for i in range(len(SEEDS)):
            units[i].append((r.nfe, err[i]))
    fit = asymptotic_fit([(np.array(u, float).T[0], np.array(u, float).T[1]) for u in units],
                         math.inf)
    assert fit["asymptotic"], (sampler, fit["slopes"])
    assert abs(fit["order"] - order) <= 0.25, (sampler, fit)


def test_which_limit_each_sampler_approaches(model32, limits):
    lms = _run(model32, "lms", 48).samples.numpy()
    eul = _run(model32, "euler", 48).samples.numpy()
    assert rmse(lms, limits["zero"]).mean() < rmse(lms, limits["denoised"]).mean()
    assert rmse(eul, limits["denoised"]).mean() < rmse(eul, limits["zero"]).mean()


def _points(steps, d, change):
    """The key points of a curve measured in rmse, for both distances and the change (the
    thresholds pinned here are of rmse on the 32x32 analytic model)."""
    a = AnalysisConfig(indicative=0.05, converged=0.0078, coherent_noise=6.0,
                       coherent_clipped=1.0, nonconvergence_change=0.05)
    n = len(steps)
    m = CurveMeasures(steps, np.array(d), np.array(d), forward_changes(steps, change),
                      np.zeros(n), np.zeros(n))
    return curve_points(m, a, a.indicative)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpm_2_ancestral"])
def test_ancestral_reported_as_not_converging(model32, sampler):
    steps = [8, 16, 32, 64]
    outs = [_run(model32, sampler, n).samples.numpy() for n in steps]
    for row in range(len(SEEDS)):
        ch = [rmse(outs[i][row:row + 1], outs[i + 1][row:row + 1])[0] for i in range(3)] + [math.nan]
        d = [rmse(o[row:row + 1], outs[-1][row:row + 1])[0] for o in outs[:-1]] + [math.nan]
        p = _points(steps, d, ch)
        assert p["does_not_converge"], (sampler, ch)


def test_deterministic_sampler_not_flagged(model32):
    steps = [8, 16, 32, 64]
    outs = [_run(model32, "heun", n).samples.numpy() for n in steps]
    ch = [rmse(outs[i], outs[i + 1])[0] for i in range(3)] + [math.nan]
    d = [rmse(o, outs[-1])[0] for o in outs[:-1]] + [math.nan]
    p = _points(steps, d, ch)
    assert not p["does_not_converge"]
    torch.manual_seed(0)
