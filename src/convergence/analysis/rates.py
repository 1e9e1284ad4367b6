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
from scipy.stats import t as student_t

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
#: the last SLOPE_WINDOW local slopes (three successive doublings: four ladder points) and
#: the order fitted over the range they span must agree within a tolerance: SLOPE_TOL
#: (largest minus smallest) on one curve, less a seed margin on several
#: (:func:`slope_tolerance`). SLOPE_TOL by measurement (benchmarks/order_rule.py,
#: results/measured/order_rule.txt): on the check study's Karras runs (one curve, no seed
#: spread) the samplers whose slopes settle towards their theoretical order span at most
#: 0.144 over their last three slopes and fit (ddim 0.02, plms 0.09, dpm_2 and heun 0.11,
#: heunpp2 0.11, dpmpp_2m 0.13, deis 0.14), the drifting ones at least 0.16
#: (gradient_estimation 0.16, still rising; res_multistep 0.19; lms 0.24, falling;
#: ipndm 0.35, ipndm_v_exact 0.42). Every order accepted so is within 0.13 of its sampler's
#: theoretical order, so SLOPE_TOL is also how well an accepted order is known.
SLOPE_WINDOW = 3
SLOPE_TOL = 0.15
#: one-sided level of the seed margin (:func:`slope_tolerance`)
SEED_LEVEL = 0.95
#: a curve that shrinks slower than this is a plateau, not converging to that reference:
#: it has no order (and a limit is approached only above it, choose_limit)
MIN_ORDER = 0.3
#: fewer seeds than this: an order's interval is the per-seed range of the fits (a
#: bootstrap over 2-4 seeds only re-draws the same few fits; it is no 95 % interval)
MIN_BOOTSTRAP_SEEDS = 5


def slope_tolerance(seed_slopes: np.ndarray | None, tol: float = SLOPE_TOL) -> float:
    """How far the last local slopes of a median curve may spread and still "agree",
    accounting for the spread over seeds.

    ``seed_slopes`` (seeds x intervals): each seed's own local slopes on the same ladder
    intervals. The median curve's slope in an interval has a standard error of about
    1.2533 * sigma / sqrt(n) (the median's, for n seeds whose slopes scatter with sigma,
    pooled over the intervals with n - 1 degrees of freedom each); the spread of the slopes
    is a difference of two of them, standard error sqrt(2) times that. Agreement within
    ``tol`` is accepted only where it holds with that margin: tol - t * sqrt(2) * 1.2533 *
    sigma / sqrt(n), t the one-sided SEED_LEVEL quantile of Student's t on the pooled
    degrees of freedom. One curve (or seeds that agree exactly): ``tol``. Seeds whose
    slopes disagree leave no room: the order is not accepted from them."""
    if seed_slopes is None:
        return tol
    sl = np.asarray(seed_slopes, dtype=np.float64)
    sl = sl[np.all(np.isfinite(sl), axis=1)] if sl.ndim == 2 else sl[None, :0]
    n = len(sl)
    if n < 2:
        return tol
    df = sl.shape[1] * (n - 1)
    sigma = math.sqrt(float(np.sum((sl - sl.mean(0)) ** 2)) / df)
    se = math.sqrt(2.0) * 1.2533 * sigma / math.sqrt(n)
    return tol - float(student_t.ppf(SEED_LEVEL, df)) * se


def order_accepted(slopes, order: float, window: int = SLOPE_WINDOW,
                   tol: float = SLOPE_TOL) -> bool:
    """The rule: at least ``window`` (three) local slopes, and the last ``window`` of them
    with the fitted ``order`` agree within ``tol`` (max - min; :func:`slope_tolerance` with
    several seeds), and the order is at least MIN_ORDER."""
    last = np.asarray(slopes, dtype=np.float64)[-window:]
    if len(last) < window or not math.isfinite(order) or order < MIN_ORDER:
        return False
    if not np.all(np.isfinite(last)):
        return False
    both = np.append(last, order)
    return bool(both.max() - both.min() <= tol + 1e-12)


def _unit_slopes(units: list[tuple[np.ndarray, np.ndarray]], lx: np.ndarray,
                 x_ref: float) -> np.ndarray:
    """Each unit's local slopes between the ladder points ``lx`` (NaN where it lacks one)."""
    out = np.full((len(units), max(len(lx) - 1, 0)), np.nan)
    for i, (x, d) in enumerate(units):
        at = {float(a): float(b) for a, b in zip(x, d, strict=True)}
        dd = np.array([at.get(float(v), np.nan) for v in lx])
        if np.all(np.isfinite(dd)) and np.all(dd > 0):
            out[i] = (-np.diff(np.log(dd)) / np.diff(np.log(lx)) if not math.isfinite(x_ref)
                      else [_slope_finite_ref(lx[k], lx[k + 1], dd[k] / dd[k + 1], x_ref)
                            for k in range(len(lx) - 1)])
    return out


def seed_range(units: list[tuple[np.ndarray, np.ndarray]], x_ref: float) -> tuple[float, float]:
    """(smallest, largest) b fitted to each unit alone: the per-seed spread of an order."""
    bs = [fit_power(x, d, x_ref)[1] for x, d in units]
    bs = [b for b in bs if math.isfinite(b)]
    return (min(bs), max(bs)) if bs else (math.nan, math.nan)


def asymptotic_fit(units: list[tuple[np.ndarray, np.ndarray]], x_ref: float, n_boot: int = 0,
                   window: int = SLOPE_WINDOW, tol: float = SLOPE_TOL) -> dict:
    """Order of one curve or of several seeds' curves (``units``), fitted over the span of
    the last ``window`` local slopes and accepted only where ``order_accepted`` (the one
    rule) at :func:`slope_tolerance` of the seeds' own slopes. Slopes are taken on the
    median over units at each x; the fit uses every unit's points in that range. Its
    interval (``b_lo``, ``b_hi``, ``interval``): a bootstrap over units with at least
    MIN_BOOTSTRAP_SEEDS of them, else the per-seed range of the fits."""
    nan = {"a": math.nan, "b": math.nan, "b_lo": math.nan, "b_hi": math.nan,
           "x_lo": math.nan, "x_hi": math.nan, "slopes": "", "asymptotic": False,
           "order_fit": math.nan, "order": math.nan, "interval": "", "tol": math.nan}
    if not units:
        return nan
    lx, sl = local_slopes(*_median_curve(units), x_ref)
    if len(sl) < 2:
        return {**nan, "slopes": ",".join(f"{v:.2f}" for v in sl)}
    k = min(window, len(sl))
    lo, hi = float(lx[-k - 1]), float(lx[-1])
    inside = [(u[0][(u[0] >= lo) & (u[0] <= hi)], u[1][(u[0] >= lo) & (u[0] <= hi)]) for u in units]
    if len(units) >= MIN_BOOTSTRAP_SEEDS and n_boot:
        a, b, b_lo, b_hi = bootstrap_b(inside, x_ref, n_boot)
        interval = f"bootstrap {n_boot} over {len(units)} seeds, 95%"
    else:
        a, b = fit_power(np.concatenate([u[0] for u in inside]),
                         np.concatenate([u[1] for u in inside]), x_ref)
        b_lo, b_hi = seed_range(inside, x_ref) if len(units) > 1 else (math.nan, math.nan)
        interval = f"per-seed range of {len(units)} seeds" if len(units) > 1 else ""
    tol_eff = slope_tolerance(_unit_slopes(units, lx[-k - 1:], x_ref), tol)
    ok = order_accepted(sl, -b, window, tol_eff)
    # b and its interval only where asymptotic (a reader of b never sees a pre-asymptotic
    # number); the fit itself stays in order_fit, for the record
    return {"a": a, "b": b if ok else math.nan, "b_lo": b_lo if ok else math.nan,
            "b_hi": b_hi if ok else math.nan, "x_lo": lo, "x_hi": hi,
            "slopes": ",".join(f"{v:.2f}" for v in sl), "asymptotic": ok, "order_fit": -b,
            "order": -b if ok else math.nan, "interval": interval if ok else "",
            "tol": tol_eff}


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


#: a limit is chosen only where the distance to it is at most this fraction of the gap to
#: every other limit (lower bound of the gap, triangle inequality: d_other - d_chosen).
#: Why a quarter: a sampler converging to L1 with error e sits at about sqrt(e^2 + g^2)
#: from a limit L2 at distance g from L1 (the error and the gap are unrelated directions),
#: so its local slope against L2 is p / (1 + (g/e)^2) for order p. At e <= g/4 that is at
#: most p/17, below MIN_ORDER for every order up to 5: only then can the distances not
#: mistake one limit for the other. Measured on the check study (Karras, 32x32): euler
#: 1.3e-3 from D(x(sigma_min)) with a gap of at least 7.6e-3 (0.17), lms 1.2e-3 from x(0)
#: with at least 6.4e-3 (0.19), heun 2e-5 (0.002). A sampler still about as far from every
#: limit as they are from each other (issue 28: plms at CFG 7.5 "approaches" all three)
#: is "ambiguous"
GAP_FRACTION = 0.25


def approaching(x, d) -> tuple[bool, np.ndarray]:
    """(whether the distance shrinks towards this limit, its local slopes): a local order
    of at least MIN_ORDER over the last ladder interval and over the last two together
    (a limit the sampler misses shows a plateau at the distance between the limits)."""
    x, d = np.asarray(x, dtype=np.float64), np.asarray(d, dtype=np.float64)
    lx, sl = local_slopes(x, d)
    if len(lx) < 3:
        return bool(len(sl) and sl[-1] >= MIN_ORDER), sl
    ld = dict(zip(*ladder(x, d), strict=True))
    span = -math.log(ld[lx[-1]] / ld[lx[-3]]) / math.log(lx[-1] / lx[-3])
    return bool(sl[-1] >= MIN_ORDER and span >= MIN_ORDER), sl


def choose_limit(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[str | None, str]:
    """THE rule choosing which exact limit a sampler approaches, from its distance to each
    (x ascending, distance), used by limits.csv and `convergence check`: the nearest at the
    top of the sweep among those approached (:func:`approaching`), provided it is well below
    the gaps to the others (GAP_FRACTION). Returns (limit, "closest"), (None, "ambiguous")
    or (None, "none approached")."""
    top = {k: float(np.asarray(d, dtype=np.float64)[np.argmax(x)]) for k, (x, d) in curves.items()}
    near = [k for k, (x, d) in curves.items() if approaching(x, d)[0]]
    if not near:
        return None, "none approached"
    best = min(near, key=lambda k: top[k])
    gaps = [top[k] - top[best] for k in curves if k != best]
    if any(top[best] > GAP_FRACTION * g for g in gaps):
        return None, "ambiguous"
    return best, "closest"


def limits_table(dist: pd.DataFrame, rates: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Which exact limit each sampler approaches (:func:`choose_limit` on the median
    distance over seeds, against NFE), with its order from the rates table."""
    d = dist[(dist.metric == metric) & dist.reference.isin(EXACT_LIMITS)]
    rows = []
    for (sampler, schedule, cfg_scale), g in d.groupby(["sampler", "schedule", "cfg"]):
        cand, curves = [], {}
        for ref, h in g.groupby("reference"):
            med = h.groupby("nfe").value.median()
            curves[ref] = (med.index.to_numpy(float), med.to_numpy(float))
            approached, sl = approaching(*curves[ref])
            r = rates[(rates.level == "all") & (rates.sampler == sampler)
                      & (rates.schedule == schedule) & (rates.cfg == cfg_scale)
                      & (rates.reference == ref) & (rates.x == "nfe") & (rates.metric == metric)]
            fit = r.iloc[0] if len(r) else None
            acc = fit is not None and bool(fit.asymptotic)
            top = h[h.steps == h.steps.max()]
            cand.append({"sampler": sampler, "schedule": schedule, "cfg": cfg_scale,
                         "metric": metric, "limit": ref, "steps": int(h.steps.max()),
                         "d_top": float(top.value.median()),
                         "slopes": ",".join(f"{v:.2f}" for v in sl), "approached": approached,
                         "x_lo": fit.x_lo if fit is not None else math.nan,
                         "x_hi": fit.x_hi if fit is not None else math.nan,
                         "asymptotic": acc, "order": fit.order if fit is not None else math.nan,
                         "order_lo": -fit.b_hi if acc else math.nan,
                         "order_hi": -fit.b_lo if acc else math.nan,
                         "interval": fit.interval if acc else ""})
        best, why = choose_limit(curves)
        for c in cand:
            c["closest"] = c["limit"] == best
            c["choice"] = "closest" if c["closest"] else (why if best is None else "")
            rows.append(c)
    return pd.DataFrame(rows, columns=columns("limits"))
