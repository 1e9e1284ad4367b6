"""Convergence rates: fit d(x) = a * (x**b - x_ref**b) of a distance against NFE or steps.

``b`` is the fitted exponent (negative for a converging curve); ``order = -b``. Against an
exact limit x_ref is infinite (x_ref**b = 0) and ``-b`` is the empirical order of accuracy.
Against a reference that is itself a finite run (x_ref its NFE), the x_ref term corrects
for the reference not having fully converged (DESIGN §5).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

B_BOUNDS = (-6.0, -0.01)


def _basis(x: np.ndarray, b: float, x_ref: float) -> np.ndarray:
    g = x**b
    if math.isfinite(x_ref):
        g = g - x_ref**b
    return g


def fit_power(x, d, x_ref: float = math.inf) -> tuple[float, float]:
    """(a, b) minimising the squared error of log d (points with d > 0 and x < x_ref).

    For a given b the best log a is closed-form, so the fit is a bounded 1-D search on b
    (scipy ``minimize_scalar``). Returns (nan, nan) with fewer than 3 usable points."""
    x = np.asarray(x, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0) & np.isfinite(x) & (x > 0)
    if math.isfinite(x_ref):
        ok &= x < x_ref
    x, ld = x[ok], np.log(d[ok])
    if len(np.unique(x)) < 3:
        return math.nan, math.nan

    def loss(b: float) -> float:
        lg = np.log(_basis(x, b, x_ref))
        la = np.mean(ld - lg)
        return float(np.sum((ld - la - lg) ** 2))

    res = minimize_scalar(loss, bounds=B_BOUNDS, method="bounded", options={"xatol": 1e-5})
    b = float(res.x)
    a = float(np.exp(np.mean(ld - np.log(_basis(x, b, x_ref)))))
    return a, b


def bootstrap_b(units: list[tuple[np.ndarray, np.ndarray]], x_ref: float, n_boot: int,
                seed: int = 0, level: float = 0.95) -> tuple[float, float, float, float]:
    """Fit pooled points of all units (seeds), then resample units with replacement.

    Returns (a, b, b_lo, b_hi); the interval is NaN with fewer than 2 units."""
    x = np.concatenate([u[0] for u in units]) if units else np.zeros(0)
    d = np.concatenate([u[1] for u in units]) if units else np.zeros(0)
    a, b = fit_power(x, d, x_ref)
    if len(units) < 2 or n_boot < 1 or math.isnan(b):
        return a, b, math.nan, math.nan
    rng = np.random.default_rng(seed)
    bs = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(units), len(units))
        bs.append(fit_power(np.concatenate([units[i][0] for i in pick]),
                            np.concatenate([units[i][1] for i in pick]), x_ref)[1])
    bs = np.asarray(bs)
    bs = bs[~np.isnan(bs)]
    if len(bs) == 0:
        return a, b, math.nan, math.nan
    q = (1 - level) / 2
    return a, b, float(np.quantile(bs, q)), float(np.quantile(bs, 1 - q))
