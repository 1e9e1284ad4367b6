"""Key-point definitions on synthetic curves: 'earliest step FROM WHICH it holds'."""

import math

import numpy as np
import pytest

from convergence.analysis.keypoints import (
    aggregate,
    curve_points,
    earliest_from_which,
    forward_changes,
    median_interval,
)

STEPS = [4, 8, 10, 20, 30, 40, 50, 100]
KW = dict(indicative=0.05, converged=0.0078, coherent_noise=0.06, coherent_change=0.05,
          nonconvergence_change=0.05)


def points(dist, change, noise=None):
    noise = noise if noise is not None else [0.01] * len(STEPS)
    return curve_points(STEPS, dist, forward_changes(STEPS, change), noise, **KW)


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


def test_coherence_needs_low_noise_stability_and_the_indicative_point():
    ch = [0.3, 0.2, 0.04, 0.03, 0.02, 0.01, 0.005, math.nan]
    noise = [0.3, 0.2, 0.2, 0.05, 0.04, 0.04, 0.04, 0.04]
    p = points([math.nan] * 8, ch, noise)  # no reference: nothing is indicative, so not coherent
    assert p["coherent"] is None and p["indicative"] is None
    assert p["coherent_heuristic"] == 20  # the reference-free part alone
    d = [0.3, 0.04, 0.03, 0.02, 0.01, 0.005, 0.004, math.nan]
    p = points(d, ch, noise)
    assert (p["indicative"], p["coherent"], p["converged"]) == (8, 20, 40)


def test_each_point_waits_for_the_one_below_it():
    """The conditions are nested: a distance under the converged threshold (from 20) while
    the image still changes (40) is not converged until coherent (50); with no late
    change it is converged where the noise clears (20). A converged point computed from the
    distance alone would read 20 in both."""
    d = [0.04, 0.03, 0.02, 0.005, 0.004, 0.003, 0.002, math.nan]
    ch = [0.04, 0.04, 0.04, 0.01, 0.01, 0.08, 0.01, math.nan]
    noise = [0.01, 0.01, 0.10, 0.01, 0.01, 0.01, 0.01, 0.01]
    p = points(d, ch, noise)
    # indicative from 4; coherent needs noise (fails at 10) and change (fails at 40): 50
    assert (p["indicative"], p["coherent"], p["converged"]) == (4, 50, 50)
    p = points(d, [0.01] * 7 + [math.nan], noise)
    assert (p["indicative"], p["coherent"], p["converged"]) == (4, 20, 20)


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
    from convergence.analysis.keypoints import deterministic_baseline
    # a smooth picture: ancestral fresh noise (0.02) is below the absolute bar 0.05, but far
    # above every ODE solver's late change (<= 0.002): it does not converge
    anc = [0.3, 0.2, 0.1, 0.04, 0.03, 0.025, 0.02, math.nan]
    det = [0.3, 0.1, 0.05, 0.01, 0.005, 0.003, 0.002, math.nan]
    tops = {"euler_a": ((50, 100), 0.02), "euler": ((50, 100), 0.002), "heun": ((50, 100), 0.001)}
    base = deterministic_baseline(tops, {"euler", "heun"})
    assert base == {"euler_a": 0.002, "euler": 0.002, "heun": 0.002}
    d = [0.3] * 7 + [math.nan]
    kw = {**KW}
    p = curve_points(STEPS, d, forward_changes(STEPS, anc), [0.01] * 8, **kw,
                     baseline_change=base["euler_a"])
    assert p["does_not_converge"] and not p["settled"]
    assert not curve_points(STEPS, d, forward_changes(STEPS, anc), [0.01] * 8, **kw)[
        "does_not_converge"]  # the absolute bar alone misses it
    # a hard picture: an ODE solver still moves 0.08 at the top: 0.06 is not distinguishable
    p = curve_points(STEPS, d, forward_changes(STEPS, [0.06] * 7 + [math.nan]), [0.01] * 8, **kw,
                     baseline_change=0.08)
    assert not p["does_not_converge"]
    # the deterministic sampler defining the baseline is never flagged by it
    p = curve_points(STEPS, d, forward_changes(STEPS, det), [0.01] * 8, **kw,
                     baseline_change=base["euler"])
    assert not p["does_not_converge"]
