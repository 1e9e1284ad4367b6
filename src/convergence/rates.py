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


#: grid of b for the bootstrap (step 0.0025): all resamples are fitted in one array
#: operation instead of one scalar optimisation each (the interval needs no finer b)
B_GRID = np.arange(B_BOUNDS[0], B_BOUNDS[1] + 1e-12, 0.0025)


def _grid_fits(x: np.ndarray, ld: np.ndarray, w: np.ndarray, x_ref: float) -> np.ndarray:
    """Best b on B_GRID of the weighted log least squares, for each row of weights ``w``
    (R, n): a resample of units is a vector of how often each point is drawn."""
    with np.errstate(divide="ignore", invalid="ignore"):
        g = x[None, :] ** B_GRID[:, None]
        if math.isfinite(x_ref):
            g = g - x_ref ** B_GRID[:, None]
        r = ld[None, :] - np.log(g)                                   # (G, n)
    sw = w.sum(1, keepdims=True)                                      # (R, 1)
    s1 = w @ r.T                                                      # (R, G)
    loss = w @ (r**2).T - s1**2 / sw
    loss[~np.isfinite(loss)] = np.inf
    best = B_GRID[np.argmin(loss, axis=1)]
    n_x = np.array([len(np.unique(x[wi > 0])) for wi in w])
    return np.where(n_x >= 3, best, np.nan)


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
    unit_of = np.concatenate([np.full(len(u[0]), i) for i, u in enumerate(units)])
    ok = np.isfinite(d) & (d > 0) & np.isfinite(x) & (x > 0)
    if math.isfinite(x_ref):
        ok &= x < x_ref
    counts = np.stack([np.bincount(rng.integers(0, len(units), len(units)),
                                   minlength=len(units)) for _ in range(n_boot)])
    w = counts[:, unit_of[ok]].astype(np.float64)
    bs = _grid_fits(x[ok], np.log(d[ok]), w, x_ref)
    bs = bs[~np.isnan(bs)]
    if len(bs) == 0:
        return a, b, math.nan, math.nan
    q = (1 - level) / 2
    return a, b, float(np.quantile(bs, q)), float(np.quantile(bs, 1 - q))
