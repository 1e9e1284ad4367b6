"""Convergence rates: fit d(x) = a * (x**b - x_ref**b) of a distance against NFE or steps.

``b`` is the fitted exponent (negative for a converging curve); ``order = -b``. Against an
exact limit x_ref is infinite (x_ref**b = 0) and ``-b`` is the empirical order of accuracy.
Against a reference that is itself a finite run (x_ref its NFE), the x_ref term corrects
for the reference not having fully converged (DESIGN §5).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from convergence.analysis import metrics as M
from convergence.analysis.references import EXACT_LIMITS
from convergence.analysis.tables import columns

B_BOUNDS = (-6.0, -0.01)


def _basis(x: np.ndarray, b: float, x_ref: float) -> np.ndarray:
    g = x**b
    if math.isfinite(x_ref):
        g = g - x_ref**b
    return g


def _usable(x: np.ndarray, d: np.ndarray, x_ref: float) -> np.ndarray:
    """Points a power law can be fitted through: d > 0, x > 0 and x < x_ref."""
    ok = np.isfinite(d) & (d > 0) & np.isfinite(x) & (x > 0)
    if math.isfinite(x_ref):
        ok &= x < x_ref
    return ok


def _slope_fits(lx: np.ndarray, ld: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Against a limit (x_ref = inf) log d = log a + b log x is linear in b: the weighted
    least-squares slope of each row of weights ``w`` (R, n), closed-form and clipped to
    B_BOUNDS (the minimum of a convex quadratic on an interval)."""
    sw = w.sum(1)
    mx, md = w @ lx / sw, w @ ld / sw
    sxx = w @ (lx * lx) - sw * mx * mx
    sxy = w @ (lx * ld) - sw * mx * md
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(sxy / sxx, *B_BOUNDS)


def fit_power(x, d, x_ref: float = math.inf) -> tuple[float, float]:
    """(a, b) minimising the squared error of log d (points with d > 0 and x < x_ref).

    For a given b the best log a is closed-form, so the fit is a bounded 1-D search on b
    (scipy ``minimize_scalar``); against a limit (x_ref = inf) it is a straight line in
    log-log, solved directly. Returns (nan, nan) with fewer than 3 usable points."""
    x = np.asarray(x, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    ok = _usable(x, d, x_ref)
    x, ld = x[ok], np.log(d[ok])
    if len(np.unique(x)) < 3:
        return math.nan, math.nan
    if not math.isfinite(x_ref):
        b = float(_slope_fits(np.log(x), ld, np.ones((1, len(x))))[0])
    else:
        def loss(b: float) -> float:
            lg = np.log(_basis(x, b, x_ref))
            la = np.mean(ld - lg)
            return float(np.sum((ld - la - lg) ** 2))

        b = float(minimize_scalar(loss, bounds=B_BOUNDS, method="bounded",
                                  options={"xatol": 1e-5}).x)
    a = float(np.exp(np.mean(ld - np.log(_basis(x, b, x_ref)))))
    return a, b


#: grid of b for the bootstrap against a finite reference (step 0.0025): all resamples
#: are fitted in one array operation instead of one scalar optimisation each (the interval
#: needs no finer b); against a limit each resample's fit is closed-form (_slope_fits)
B_GRID = np.arange(B_BOUNDS[0], B_BOUNDS[1] + 1e-12, 0.0025)


def _grid_fits(x: np.ndarray, ld: np.ndarray, w: np.ndarray, x_ref: float) -> np.ndarray:
    """Best b of the weighted log least squares, for each row of weights ``w`` (R, n): a
    resample of units is a vector of how often each point is drawn. NaN for a resample
    that holds fewer than 3 distinct x."""
    if not math.isfinite(x_ref):
        best = _slope_fits(np.log(x), ld, w)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = ld[None, :] - np.log(_basis(x[None, :], B_GRID[:, None], x_ref))  # (G, n)
        sw = w.sum(1, keepdims=True)                                  # (R, 1)
        s1 = w @ r.T                                                  # (R, G)
        loss = w @ (r**2).T - s1**2 / sw
        loss[~np.isfinite(loss)] = np.inf
        best = B_GRID[np.argmin(loss, axis=1)]
    ux, which = np.unique(x, return_inverse=True)
    one_hot = np.zeros((len(x), len(ux)))
    one_hot[np.arange(len(x)), which] = 1.0
    n_x = ((w > 0) @ one_hot > 0).sum(1)
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
    ok = _usable(x, d, x_ref)
    draws = rng.integers(0, len(units), (n_boot, len(units)))
    counts = (draws[:, :, None] == np.arange(len(units))).sum(1)        # (R, units)
    w = counts[:, unit_of[ok]].astype(np.float64)
    bs = _grid_fits(x[ok], np.log(d[ok]), w, x_ref)
    bs = bs[~np.isnan(bs)]
    if len(bs) == 0:
        return a, b, math.nan, math.nan
    q = (1 - level) / 2
    return a, b, float(np.quantile(bs, q)), float(np.quantile(bs, 1 - q))


# -- orders only where asymptotic ---------------------------------------------------------
#: successive points of the slope ladder are at least this factor apart (a doubling where
#: the sweep has one: 4, 8, 10, 20, 30, 40, 50, 100 -> 100, 50, 30, 20, 10, 4)
LADDER_RATIO = 1.5


def ladder(x, d, x_ref: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """The points the local slopes are taken between: from the largest usable x down, each
    next point the largest x at most x/LADDER_RATIO (slopes over short intervals are noise)."""
    x = np.asarray(x, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    ok = _usable(x, d, x_ref)
    x, d = x[ok], d[ok]
    if len(x) == 0:
        return x, d
    order = np.argsort(x)
    x, d = x[order], d[order]
    keep = [len(x) - 1]
    for i in range(len(x) - 2, -1, -1):
        if x[i] * LADDER_RATIO <= x[keep[-1]] + 1e-9:
            keep.append(i)
    keep = keep[::-1]
    return x[keep], d[keep]


def _slope_finite_ref(x0: float, x1: float, r: float, x_ref: float) -> float:
    """The p with (x0^-p - X^-p) / (x1^-p - X^-p) = r (the model d = a(x^-p - X^-p) through
    both points); NaN when no positive p does (the curve does not shrink like the model)."""
    from scipy.optimize import brentq

    def f(p: float) -> float:
        return math.log((x0**-p - x_ref**-p) / (x1**-p - x_ref**-p)) - math.log(r)

    lo, hi = 1e-4, 12.0
    try:
        if f(lo) * f(hi) > 0:
            return math.nan
        return float(brentq(f, lo, hi, xtol=1e-6))
    except (ValueError, ZeroDivisionError, OverflowError):
        return math.nan


def local_slopes(x, d, x_ref: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """(ladder x, local orders between successive ladder points, ascending x). Against a
    limit (x_ref = inf) the local order is -dlog d/dlog x; against a finite run of the same
    sampler (x_ref its NFE) it is the exponent of the fitted model through the two points."""
    lx, ld = ladder(x, d, x_ref)
    if len(lx) < 2:
        return lx, np.zeros(0)
    if not math.isfinite(x_ref):
        return lx, -np.diff(np.log(ld)) / np.diff(np.log(lx))
    return lx, np.array([_slope_finite_ref(lx[i], lx[i + 1], ld[i] / ld[i + 1], x_ref)
                         for i in range(len(lx) - 1)])


# -- the one rule for accepting an order (docs/analysis.md, "Orders only where asymptotic");
# the analysis, `convergence check`, the README's tables and the report all use it.
#: the last SLOPE_WINDOW local slopes (the last two doublings: three ladder points) and the
#: order fitted over the range they span must agree within SLOPE_TOL (largest minus
#: smallest). Chosen by measurement (benchmarks/order_rule.py, results/measured/
#: order_rule.txt): on the check study's Karras runs the asymptotic samplers' last two
#: slopes differ by at most 0.06 and the drifting ones' (deis, ipndm, ipndm_v, lms) by
#: 0.13-0.20; every order accepted this way is within 0.09 of its sampler's theoretical
#: order, so SLOPE_TOL is also how well an accepted order is known. The former +-0.3 over
#: three slopes accepted deis at 2.40, ipndm 2.32, ipndm_v 2.40 (theory 2) and lms 0.75.
SLOPE_WINDOW = 2
SLOPE_TOL = 0.1
#: a curve that shrinks slower than this is a plateau, not converging to that reference:
#: it has no order (and a limit is approached only above it, limits_table)
MIN_ORDER = 0.3


def order_accepted(slopes, order: float, window: int = SLOPE_WINDOW,
                   tol: float = SLOPE_TOL) -> bool:
    """The rule: the last ``window`` local slopes and the fitted ``order`` agree within
    ``tol`` (max - min), and the order is at least MIN_ORDER."""
    last = np.asarray(slopes, dtype=np.float64)[-window:]
    if len(last) < window or not math.isfinite(order) or order < MIN_ORDER:
        return False
    if not np.all(np.isfinite(last)):
        return False
    both = np.append(last, order)
    return bool(both.max() - both.min() <= tol + 1e-12)


def asymptotic_fit(units: list[tuple[np.ndarray, np.ndarray]], x_ref: float, n_boot: int = 0,
                   window: int = SLOPE_WINDOW, tol: float = SLOPE_TOL) -> dict:
    """Order of one curve or of several seeds' curves (``units``), fitted over the span of
    the last ``window`` local slopes and accepted only where ``order_accepted`` (the one
    rule). Slopes are taken on the median over units at each x; the fit and its bootstrap
    interval use every unit's points in that range."""
    nan = {"a": math.nan, "b": math.nan, "b_lo": math.nan, "b_hi": math.nan,
           "x_lo": math.nan, "x_hi": math.nan, "slopes": "", "asymptotic": False,
           "order_fit": math.nan, "order": math.nan}
    if not units:
        return nan
    lx, sl = local_slopes(*_median_curve(units), x_ref)
    if len(sl) < 2:
        return {**nan, "slopes": ",".join(f"{v:.2f}" for v in sl)}
    k = min(window, len(sl))
    lo, hi = float(lx[-k - 1]), float(lx[-1])
    inside = [(u[0][(u[0] >= lo) & (u[0] <= hi)], u[1][(u[0] >= lo) & (u[0] <= hi)]) for u in units]
    a, b, b_lo, b_hi = bootstrap_b(inside, x_ref, n_boot) if n_boot else (*fit_power(
        np.concatenate([u[0] for u in inside]), np.concatenate([u[1] for u in inside]), x_ref),
        math.nan, math.nan)
    ok = order_accepted(sl, -b, window, tol)
    # b and its interval only where asymptotic (a reader of b never sees a pre-asymptotic
    # number); the fit itself stays in order_fit, for the record
    return {"a": a, "b": b if ok else math.nan, "b_lo": b_lo if ok else math.nan,
            "b_hi": b_hi if ok else math.nan, "x_lo": lo, "x_hi": hi,
            "slopes": ",".join(f"{v:.2f}" for v in sl), "asymptotic": ok, "order_fit": -b,
            "order": -b if ok else math.nan}


def _median_curve(units: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(each x, the median over units of d at that x, NaNs left out)."""
    x = np.concatenate([u[0] for u in units])
    d = np.concatenate([u[1] for u in units])
    ux, which = np.unique(x, return_inverse=True)
    med = np.full(len(ux), np.nan)
    for k in range(len(ux)):
        v = d[(which == k) & ~np.isnan(d)]
        if len(v):
            med[k] = np.median(v)
    return ux, med


def _rate_rows(d: pd.DataFrame, metric: str, ref: str, xname: str, top_x: dict[str, float],
               n_boot: int) -> list[dict]:
    """Rows of the rates table for one metric, reference and x: per curve, topic and all.

    A unit is one (prompt, seed) curve: x and the distance, with the x of the reference
    it was measured against (its own highest step count; inf against a limit)."""
    def row(level: str, topic: str, seed: float, key: tuple, units: list, n_boot: int = 0) -> dict:
        fit = asymptotic_fit([(u[0], u[1]) for u in units], units[0][2], n_boot)
        return {"level": level, "topic": topic, "seed": seed, "sampler": key[0],
                "schedule": key[1], "cfg": key[2], "x": xname, "reference": ref,
                "metric": metric, **fit, "n_seeds": len(units), "seed_orders": ""}

    # one pass over the rows: curve key -> its units, in the order groupby gives
    curves: dict[tuple, list[tuple[float, tuple]]] = {}
    for (topic, sampler, schedule, cfg_scale, _prompt, seed), u in d.groupby(
            ["topic", "sampler", "schedule", "cfg", "prompt", "seed"]):
        x_ref = top_x[u.ref_hash.iloc[0]] if ref == "highest" else math.inf
        curves.setdefault((topic, sampler, schedule, cfg_scale), []).append(
            (seed, (u[xname].to_numpy(float), u.value.to_numpy(float), x_ref)))
    rows = []
    per_key: dict[tuple, list] = {}
    seed_rows: dict[tuple, list] = {}
    for (topic, *key), units in curves.items():
        key = tuple(key)
        own = [row("group", topic, seed, key, [unit]) for seed, unit in units]
        rows += own
        rows.append({**row("topic", topic, math.nan, key, [u for _, u in units], n_boot),
                     "seed_orders": _seed_orders(own)})
        per_key.setdefault(key, []).extend(u for _, u in units)
        seed_rows.setdefault(key, []).extend(own)
    rows += [{**row("all", "all", math.nan, key, per_key[key], n_boot),
              "seed_orders": _seed_orders(seed_rows[key])} for key in sorted(per_key)]
    return rows


def _seed_orders(rows: list[dict]) -> str:
    """Each curve's own order beside the median curve's: the accepted ones, and how many
    of the curves the rule accepts ("2.03,2.05 (2 of 3 accepted)"); the median over seeds
    can hide a seed that is still pre-asymptotic."""
    ok = [r["order"] for r in rows if r["asymptotic"]]
    return f"{','.join(f'{o:.2f}' for o in ok)} ({len(ok)} of {len(rows)} accepted)"


def compute_rates(a, dist: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The rates table: per curve (level group), per topic and over all topics, against NFE
    and steps, for the own highest step count (x_ref = its x: every curve of a sampler
    ends at the same step count) and the exact limits (x_ref = inf). Cross-sampler
    references (SAMPLER@STEPS) are not fitted: another sampler's image is not this
    sampler's limit, so no power law describes the distance to it."""
    rows: list[dict] = []
    refs = [r for r in dist.reference.unique() if r not in ("next", "self") and "@" not in r]
    by_hash = cells.set_index("hash")
    for metric in a.rate_metrics:
        if not M.get_metric(metric).lower_is_better:
            continue
        for ref in refs:
            d = dist[(dist.metric == metric) & (dist.reference == ref)
                     & (dist.steps >= a.rate_min_steps)]
            if d.empty:
                continue
            for xname in ("nfe", "steps"):
                top_x = {h: float(by_hash.loc[h, xname]) for h in d.ref_hash.unique() if h}
                rows += _rate_rows(d, metric, ref, xname, top_x, a.bootstrap)
    return pd.DataFrame(rows, columns=columns("rates"))


def limits_table(dist: pd.DataFrame, rates: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Which exact limit each sampler approaches, from the TREND of its distances at the top
    of the sweep: a limit is approached when the median distance to it shrinks with a local
    order of at least MIN_ORDER over the last ladder interval and over the last two together
    (a limit the sampler misses shows a plateau, local order -> 0, at the distance between
    the limits). The closest limit is the approached one with the steepest last local
    order; none when no limit is approached (ancestral samplers)."""
    d = dist[(dist.metric == metric) & dist.reference.isin(EXACT_LIMITS)]
    rows = []
    for (sampler, schedule, cfg_scale), g in d.groupby(["sampler", "schedule", "cfg"]):
        cand = []
        for ref, h in g.groupby("reference"):
            med = h.groupby("nfe").value.median()
            lx, sl = local_slopes(med.index.to_numpy(), med.to_numpy())
            last = sl[-1:]
            span = (-np.log(med.loc[lx[-1]] / med.loc[lx[-3]]) / np.log(lx[-1] / lx[-3])
                    if len(lx) >= 3 else math.nan)
            approached = bool(len(last) and last[-1] >= MIN_ORDER and span >= MIN_ORDER)
            r = rates[(rates.level == "all") & (rates.sampler == sampler)
                      & (rates.schedule == schedule) & (rates.cfg == cfg_scale)
                      & (rates.reference == ref) & (rates.x == "nfe") & (rates.metric == metric)]
            fit = r.iloc[0] if len(r) else None
            top = h[h.steps == h.steps.max()]
            cand.append({"sampler": sampler, "schedule": schedule, "cfg": cfg_scale,
                         "metric": metric, "limit": ref, "steps": int(h.steps.max()),
                         "d_top": float(top.value.median()),
                         "slopes": ",".join(f"{v:.2f}" for v in sl), "approached": approached,
                         "last_slope": float(last[-1]) if len(last) else math.nan,
                         "x_lo": fit.x_lo if fit is not None else math.nan,
                         "x_hi": fit.x_hi if fit is not None else math.nan,
                         "asymptotic": bool(fit.asymptotic) if fit is not None else False,
                         "order": fit.order if fit is not None else math.nan,
                         "order_lo": -fit.b_hi if fit is not None and fit.asymptotic else math.nan,
                         "order_hi": -fit.b_lo if fit is not None and fit.asymptotic else math.nan})
        best = max((c for c in cand if c["approached"]), key=lambda c: c["last_slope"],
                   default=None)
        for c in cand:
            c["closest"] = c is best
            del c["last_slope"]
            rows.append(c)
    return pd.DataFrame(rows, columns=columns("limits"))
