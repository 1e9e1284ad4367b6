"""Key-point definitions on synthetic curves: 'earliest step FROM WHICH it holds', each
point by its own measure (docs/analysis.md "Definitions")."""

import math

import numpy as np
import pytest

from convergence.analysis.keypoints import (
    CurveMeasures,
    aggregate,
    curve_points,
    deterministic_baseline,
    earliest_from_which,
    forward_changes,
    median_interval,
)
from convergence.config.schema import AnalysisConfig

STEPS = [4, 8, 10, 20, 30, 40, 50, 100]
A = AnalysisConfig(indicative=0.05, converged=0.0078, coherent_noise=6.0, coherent_clipped=0.1,
                   nonconvergence_change=0.05)
CLEAN = [1.0] * len(STEPS)  # residual noise in 8-bit levels: well under coherent_noise


def points(ind, change, noise=None, conv=None, clipped=None, **kw):
    """The points of a curve whose converged distance equals ``ind`` unless given."""
    m = CurveMeasures(STEPS, np.array(ind, float), np.array(ind if conv is None else conv, float),
                      forward_changes(STEPS, change), np.array(noise or CLEAN, float),
                      np.array(clipped or [0.0] * len(STEPS), float))
    return curve_points(m, A, A.indicative, **kw)


def test_monotone_curve():
    d = [0.5 / s for s in STEPS[:-1]] + [math.nan]  # reference = last
    ch = [0.5 / s - 0.5 / t for s, t in zip(STEPS[:-1], STEPS[1:], strict=False)] + [math.nan]
    p = points(d, ch)
    assert p["indicative"] == min(s for s in STEPS[:-1] if 0.5 / s <= 0.05)
    # 0.5/50 = 0.01 > 0.0078: never below the converged threshold within the sweep
    assert p["converged"] is None
    assert not p["does_not_converge"]


def test_noisy_curve_dip_does_not_count():
    d = [0.2, 0.04, 0.06, 0.03, 0.02, 0.01, 0.005, math.nan]  # dips at 8, back up at 10
    p = points(d, [0.01] * 8)
    assert p["indicative"] == 20
    assert p["converged"] == 50


def test_never_settling_is_not_converging():
    rng = np.random.default_rng(0)
    d = list(0.3 + 0.05 * rng.random(7)) + [math.nan]
    ch = list(0.3 + 0.05 * rng.random(8))
    p = points(d, ch)
    assert p["indicative"] is None and p["converged"] is None
    assert p["does_not_converge"]


def test_settling_only_at_last_point():
    d = [0.3, 0.2, 0.1, 0.09, 0.08, 0.07, 0.04, math.nan]
    p = points(d, [0.1] * 8)
    assert p["indicative"] == 50
    assert earliest_from_which([1, 2, 3], [False, False, True]) == 3


def test_late_excursion_after_settling():
    d = [0.2, 0.04, 0.03, 0.02, 0.1, 0.03, 0.02, math.nan]  # excursion at 30
    p = points(d, [0.01] * 8)
    assert p["indicative"] == 40


def test_coherence_needs_no_reference():
    """Coherent is the picture's own condition: reached on a curve with no reference at all,
    where nothing can be indicative."""
    noise = [30.0, 20.0, 9.0, 5.0, 4.0, 4.0, 4.0, 4.0]
    p = points([math.nan] * 8, [0.01] * 8, noise)
    assert p["coherent"] == 20 and p["indicative"] is None and p["converged"] is None


def test_coherent_and_indicative_are_independent():
    """Either can come first: an early composition with residual grain (indicative before
    coherent), and a clean picture of the wrong content (coherent before indicative)."""
    d = [0.3, 0.04, 0.03, 0.02, 0.01, 0.005, 0.004, math.nan]
    grainy = [30.0, 20.0, 9.0, 9.0, 5.0, 4.0, 4.0, 4.0]
    p = points(d, [0.01] * 8, grainy)
    assert (p["indicative"], p["coherent"]) == (8, 30)
    late = [0.5, 0.5, 0.4, 0.4, 0.3, 0.04, 0.001, math.nan]
    p = points(late, [0.01] * 8)
    assert (p["indicative"], p["coherent"]) == (40, 4)


def test_saturated_pictures_are_not_coherent():
    clipped = [0.9, 0.5, 0.2, 0.05, 0.05, 0.05, 0.05, 0.05]
    assert points([math.nan] * 8, [0.01] * 8, clipped=clipped)["coherent"] == 20


def test_converged_needs_indicative_and_a_coherent_picture_where_the_reference_is_one():
    """converged => indicative always; converged => coherent where the final picture is."""
    ind = [0.3, 0.2, 0.1, 0.1, 0.04, 0.03, 0.02, math.nan]
    conv = [0.3, 0.2, 0.005, 0.005, 0.005, 0.005, 0.005, math.nan]  # visibly equal from 10
    assert points(ind, [0.001] * 8, conv=conv)["converged"] == 30  # indicative from 30
    noise = [9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 4.0, 4.0]  # grain until 40; the reference is clean
    assert points([0.01] * 7 + [math.nan], [0.001] * 8, noise, conv=conv)["converged"] == 50
    noisy_ref = [9.0] * 8  # a grainy final picture: converging to it needs no coherence
    assert points([0.01] * 7 + [math.nan], [0.001] * 8, noisy_ref, conv=conv)["converged"] == 10


def test_converged_implies_indicative_on_random_curves():
    rng = np.random.default_rng(1)
    for _ in range(300):
        ind = list(np.exp(rng.uniform(-6, 0, 7))) + [math.nan]
        conv = list(np.exp(rng.uniform(-8, 0, 7))) + [math.nan]
        p = points(ind, list(np.exp(rng.uniform(-6, 0, 8))), list(rng.uniform(0, 12, 8)),
                   conv=conv)
        if p["converged"] is not None:
            assert p["indicative"] is not None and p["indicative"] <= p["converged"]


def test_aggregate_is_a_censored_median_at_a_reached_step():
    """Never reached = censored above the sweep, not +inf in an average: the median is the
    ceil(n/2)-th smallest reached step (Kaplan-Meier with every censoring at the end), or
    "> max" when fewer than half reach the point."""
    a = aggregate([10, 20, None], 100)
    assert a["median"] == 20 and a["n_reached"] == 2 and a["n_seeds"] == 3 and not a["censored"]
    b = aggregate([10, None, None], 100)
    assert math.isnan(b["median"]) and b["censored"] and b["lo"] == 10
    # an even count never averages two step counts (the 45 and (50 + inf) / 2)
    assert aggregate([40, 50], 100)["median"] == 40
    assert aggregate([50, None], 100)["median"] == 50
    assert aggregate([20, 50, None, None], 100)["median"] == 50
    c = aggregate([None, 30, 40, 40, 50, 50, 50, 100, 100, None, None, 20, 30, 40, 100], 100)
    assert c["median"] == 50 and c["n_reached"] == 12
    # 15 seeds: order statistics 4 and 12 cover the median with 96.5 %
    assert (c["ci_lo"], c["ci_hi"]) == (40, 100) and c["ci_level"] == pytest.approx(0.9648, abs=1e-4)
    d = aggregate([None] * 9 + [20] * 6, 100)
    assert d["censored"] and d["ci_lo"] == 20 and math.isnan(d["ci_hi"])  # upper: > 100


@pytest.mark.parametrize("n", [3, 7, 15, 40])
def test_median_interval_covers_the_true_median(n):
    """Against samples of a known distribution (true median 30; a fifth of the seeds never
    reach the point) the interval holds the true median at least as often as it says
    (order statistics: exact coverage, up to 3 standard errors of 4000 draws)."""
    steps = np.array([4, 8, 10, 20, 30, 40, 50, 100])
    p = np.array([0.05, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.05])  # P(<= 20) = 0.45, P(<= 30) = 0.55
    p_never = 1 - p.sum()
    rng = np.random.default_rng(n)
    lo, hi, level = median_interval(n)
    hit = 0
    for _ in range(4000):
        draw = rng.choice(len(steps) + 1, n, p=[*p, p_never])
        a = aggregate([None if k == len(steps) else int(steps[k]) for k in draw], 100)
        upper = math.inf if math.isnan(a["ci_hi"]) else a["ci_hi"]
        hit += a["ci_lo"] <= 30 <= upper
    assert hit / 4000 >= level - 3 * math.sqrt(level * (1 - level) / 4000), (n, hit, level)


def test_nonconvergence_relative_to_deterministic_samplers():
    # a smooth picture: ancestral fresh noise (0.02) is below the absolute bar 0.05, but far
    # above every ODE solver's late change (<= 0.002): it does not converge
    anc = [0.3, 0.2, 0.1, 0.04, 0.03, 0.025, 0.02, math.nan]
    det = [0.3, 0.1, 0.05, 0.01, 0.005, 0.003, 0.002, math.nan]
    tops = {"euler_a": ((50, 100), 0.02), "euler": ((50, 100), 0.002), "heun": ((50, 100), 0.001)}
    base = deterministic_baseline(tops, {"euler", "heun"})
    assert base == {"euler_a": 0.002, "euler": 0.002, "heun": 0.002}
    d = [0.3] * 7 + [math.nan]
    p = points(d, anc, baseline_change=base["euler_a"])
    assert p["does_not_converge"] and not p["settled"]
    assert not points(d, anc)["does_not_converge"]  # the absolute bar alone misses it
    # a hard picture: an ODE solver still moves 0.08 at the top: 0.06 is not distinguishable
    assert not points(d, [0.06] * 7 + [math.nan], baseline_change=0.08)["does_not_converge"]
    # the deterministic sampler defining the baseline is never flagged by it
    assert not points(d, det, baseline_change=base["euler"])["does_not_converge"]
