"""Convergence rates: the fit recovers known exponents, and on the analytic model the
measured orders against the exact ODE limit match theory (Karras schedule)."""

import math

import numpy as np
import pytest
import torch

from convergence.analysis.keypoints import CurveMeasures, curve_points, forward_changes
from convergence.analysis.metrics import rmse
from convergence.analysis.rates import (
    GAP_FRACTION,
    SLOPE_TOL,
    asymptotic_fit,
    bootstrap_b,
    choose_limit,
    fit_power,
    local_slopes,
    slope_tolerance,
)
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
    # fitted over the last three doublings, the span of the slopes the rule compares
    assert ok["asymptotic"] and abs(ok["order"] - 2) < 1e-3 and (ok["x_lo"], ok["x_hi"]) == (24, 192)
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


def _curve(slopes, x0=16.0, d0=1e-2):
    """A curve with the given local slopes between successive doublings from x0."""
    x = x0 * 2.0 ** np.arange(len(slopes) + 1)
    return x, d0 * np.cumprod([1.0] + [2.0**-s for s in slopes])


@pytest.mark.parametrize("slopes,accepted", [
    ((2.30, 2.14, 2.07, 2.03), True),    # heun on the check study: settling towards 2
    ((1.29, 0.84, 0.79, 0.60), False),   # lms: drifting away, 0.24 over the last three
    ((1.0, 0.91, 0.81, 0.72), False),    # issue 28's euler on discrete, seed 1
    ((2.0, 2.0), False),                 # two slopes are too few, however well they agree
])
def test_order_needs_three_agreeing_slopes(slopes, accepted):
    fit = asymptotic_fit([_curve(slopes)], math.inf)
    assert fit["asymptotic"] is accepted, fit["slopes"]
    assert math.isnan(fit["order"]) is not accepted


def test_slope_tolerance_shrinks_with_the_spread_over_seeds():
    """One curve: SLOPE_TOL. Seeds whose slopes scatter by sigma: SLOPE_TOL - t * sqrt(2) *
    1.2533 * sigma / sqrt(n), t the one-sided 95 % Student quantile on 3 (n - 1) degrees of
    freedom; equal seeds leave it at SLOPE_TOL."""
    assert slope_tolerance(None) == SLOPE_TOL == slope_tolerance(np.array([[1.0, 1.0, 1.0]]))
    assert slope_tolerance(np.array([[1.0, 1.1, 0.9]] * 4)) == pytest.approx(SLOPE_TOL)
    two = np.array([[1.0, 1.0, 1.0], [1.1, 1.1, 1.1]])   # sigma^2 = 3 * 2 * 0.05^2 / 3
    sigma = math.sqrt(3 * 2 * 0.05**2 / 3)
    want = SLOPE_TOL - 2.3533634 * math.sqrt(2) * 1.2533 * sigma / math.sqrt(2)
    assert slope_tolerance(two) == pytest.approx(want, rel=1e-6)


def test_seeds_that_disagree_refuse_an_order_their_median_would_show():
    """Two seeds settled at 0.77 and 0.90 (issue 28: 0.765 and 0.896): their median curve's
    slopes agree within SLOPE_TOL, but the seeds do not agree on it."""
    a, b = _curve((0.80, 0.78, 0.77, 0.76)), _curve((0.80, 0.92, 0.89, 0.90))
    assert asymptotic_fit([a], math.inf)["asymptotic"]
    both = asymptotic_fit([a, b], math.inf)
    med = [float(v) for v in both["slopes"].split(",")]
    assert max(med[-3:]) - min(med[-3:]) <= SLOPE_TOL and not both["asymptotic"]
    assert both["tol"] < 0


def test_interval_is_the_seed_range_below_five_seeds():
    rng = np.random.default_rng(3)
    x = 16.0 * 2.0 ** np.arange(5)
    units = [(x, 2.0 * x**-2.0 * np.exp(0.002 * rng.standard_normal(5))) for _ in range(6)]
    few = asymptotic_fit(units[:3], math.inf, n_boot=200)
    own = [-fit_power(u[0][1:], u[1][1:])[1] for u in units[:3]]
    assert few["asymptotic"] and few["interval"].startswith("per-seed range")
    assert (-few["b_hi"], -few["b_lo"]) == pytest.approx((min(own), max(own)))
    many = asymptotic_fit(units, math.inf, n_boot=200)
    assert many["interval"].startswith("bootstrap") and many["b_lo"] <= many["b"] <= many["b_hi"]


def test_one_rule_chooses_the_limit_or_says_ambiguous():
    x = np.array([12, 24, 48, 96.0])
    near = (x, 1e-2 * (x / 12) ** -2.0)          # approaches it: 1.6e-4 at the top
    far = (x, 1e-2 * (x / 12) ** -2.0 + 0.05)    # the other limit: a plateau at the gap
    assert choose_limit({"exact-denoised": near, "exact-zero": far}) == ("exact-denoised",
                                                                         "closest")
    # both still shrinking and about as far at the top (plms at CFG 7.5): no choice
    also = (x, 1.2 * near[1])
    assert choose_limit({"exact-denoised": near, "exact-zero": also}) == (None, "ambiguous")
    # the distance just above GAP_FRACTION of the gap: ambiguous; just below: chosen
    top = near[1][-1]
    for frac, want in ((1.05, None), (0.95, "exact-denoised")):
        gap = top / (GAP_FRACTION * frac)
        other = (x, np.full(4, top + gap))
        assert choose_limit({"exact-denoised": near, "exact-zero": other})[0] == want
    assert choose_limit({"exact-zero": far}) == (None, "none approached")


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


@pytest.mark.parametrize("sampler,order,accepted", [("euler", 1, True), ("heun", 2, True),
                                                    ("dpm_2", 2, True), ("dpmpp_2m", 2, False)])
def test_measured_order_matches_theory(model32, limits, sampler, order, accepted):
    """Karras runs at CFG 1, steps 12-96: the order is ACCEPTED (rates.order_accepted: the
    last three local slopes and the fit agree within rates.slope_tolerance of the two
    seeds) and within 0.25 of theory
    (measured: 1.01, 2.08, 2.07; results/measured/orders_karras_limits.csv). dpmpp_2m's slopes still
    settle there (2.20, 2.12, 2.06: 0.14 apart, above the 0.137 the two seeds leave): refused,
    each slope nearer 2 than the one before (it is accepted at 2.10 up to 128 steps on the
    check study)."""
    units = [[], []]
    for n in [*STEPS, 96]:
        r = _run(model32, sampler, n)  # float64 in memory (the store keeps fp32)
        err = rmse(r.samples.numpy(), limits["denoised"])
        for i in range(len(SEEDS)):
            units[i].append((r.nfe, err[i]))
    fit = asymptotic_fit([(np.array(u, float).T[0], np.array(u, float).T[1]) for u in units],
                         math.inf)
    assert fit["asymptotic"] is accepted, (sampler, fit["slopes"], fit["tol"], fit["order_fit"])
    if accepted:
        assert abs(fit["order"] - order) <= 0.25, (sampler, fit)
    else:
        off = [abs(float(v) - order) for v in fit["slopes"].split(",")]
        assert all(b < a for a, b in zip(off, off[1:], strict=False)), fit["slopes"]


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
