"""Key-point definitions on synthetic curves: 'earliest step FROM WHICH it holds'."""

import math

import numpy as np

from convergence.analysis.keypoints import (
    aggregate,
    curve_points,
    earliest_from_which,
    forward_changes,
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


def test_points_are_ordered_on_random_curves():
    """converged => coherent => indicative, cell by cell, so the points are ordered even
    where the separate conditions would disagree (noisy, non-monotone curves)."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        d = list(np.exp(rng.uniform(-6, 0, 7))) + [math.nan]
        ch = list(np.exp(rng.uniform(-6, 0, 8)))
        noise = list(rng.uniform(0, 0.1, 8))
        p = points(d, ch, noise)
        inf = math.inf
        ind, coh, conv = (inf if p[k] is None else p[k] for k in ("indicative", "coherent", "converged"))
        assert ind <= coh <= conv


def test_aggregate_median_counts_missing_as_not_reached():
    a = aggregate([10, 20, None])
    assert a["median"] == 20 and a["n_reached"] == 2 and a["n_seeds"] == 3
    b = aggregate([10, None, None])
    assert math.isnan(b["median"]) and b["lo"] == 10


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
