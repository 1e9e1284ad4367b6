"""Key points are measured on what is displayed (the sample clipped to the model's display
range); orders of accuracy on the unclipped floats (issue 14)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from convergence.analysis.distances import compute_distances
from convergence.analysis.keypoints import seed_points
from convergence.analysis.rates import compute_rates
from convergence.config.schema import AnalysisConfig
from convergence.config.validate import validate_analysis
from convergence.core.errors import ConvergenceError

STEPS = [4, 8, 16, 32, 64, 128]
A = AnalysisConfig(metrics=["rel_rmse", "rmse"], references=["highest"], rate_min_steps=4,
                   bootstrap=0)


def study(seeds: int = 2, size: int = 16) -> tuple[pd.DataFrame, np.ndarray]:
    """One deterministic sampler whose float samples are base + 64/steps^2 * base^5: second
    order exactly, and far outside [-1, 1] at few steps where the picture is saturated
    anyway (like euler at CFG 7.5: the pictures differ mainly in saturation)."""
    rows, xs = [], []
    yy, xx = np.meshgrid(np.linspace(0, 3, size), np.linspace(0, 3, size), indexing="ij")
    for seed in range(seeds):
        base = np.clip(1.5 * np.sin(xx + seed + 0.7 * yy), -1, 1)
        for s in STEPS:
            rows.append({"hash": f"{seed}-{s}", "model": "m", "topic": "t", "prompt": "p",
                         "seed": seed, "sampler": "euler", "schedule": "karras", "steps": s,
                         "cfg": 7.5, "nfe": float(s), "seconds": 0.0, "stochastic": False,
                         "display_lo": -1.0, "display_hi": 1.0})
            xs.append(np.broadcast_to(base + 64 / s**2 * base**5, (3, size, size)))
    return pd.DataFrame(rows), np.stack(xs)


def analyse(cells: pd.DataFrame, samples: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                 pd.DataFrame]:
    dist, _ = compute_distances(A, None, cells, samples)
    return dist, seed_points(A, dist, cells), compute_rates(A, dist, cells)


def test_key_points_see_the_clipped_sample_and_orders_the_floats():
    cells, x = study()
    assert np.abs(x).max() > 3  # the few-step samples overshoot the display range
    dist, kp, rates = analyse(cells, x)
    _, kp_c, _ = analyse(cells, np.clip(x, -1, 1))
    # key points: the same as for the study with the overshoot clipped away
    pd.testing.assert_frame_equal(kp, kp_c)
    assert kp[kp.point == "indicative"].steps.notna().all()
    # ... and not what the unclipped floats give (so the equality above can fail)
    raw = cells.assign(display_lo=-1e9, display_hi=1e9)  # a range that clips nothing
    d_raw, kp_raw, rates_raw = analyse(raw, x)
    key = ["hash", "reference", "metric"]
    km = dist[dist.metric == "rel_rmse"].set_index(key).value
    assert not np.allclose(km, d_raw[d_raw.metric == "rel_rmse"].set_index(key).value.loc[km.index])
    assert not kp.steps.equals(kp_raw.steps)
    # orders: rmse on the unclipped floats, whatever the display range; exactly second
    # order (local slopes against the finite reference are exact up to rounding: 1e-6)
    pd.testing.assert_frame_equal(rates, rates_raw)
    r = rates[(rates.level == "all") & (rates.x == "steps")].iloc[0]
    assert r.asymptotic and abs(r.order - 2) < 1e-6


def test_key_point_metric_cannot_also_be_a_rate_metric():
    try:
        validate_analysis(AnalysisConfig(metric="rmse", rate_metrics=["rmse"]))
    except ConvergenceError as e:
        assert "rate_metrics" in str(e)
    else:
        raise AssertionError("accepted a key-point metric that rates measure on floats")
