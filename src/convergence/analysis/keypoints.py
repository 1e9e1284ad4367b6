"""Key points: per curve (one prompt and seed) first, then aggregated over seeds.

Every point is "the earliest swept step count FROM WHICH a condition holds at every larger
swept step count": a curve that dips under a threshold and comes back up later has not
reached the point at the dip. Pure functions on arrays, so they are tested on synthetic
curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import binom

from convergence.analysis.tables import GROUP
from convergence.config.schema import AnalysisConfig

POINTS = ("indicative", "coherent", "converged")


def earliest_from_which(steps: Sequence[int], holds: Sequence[bool]) -> int | None:
    """Smallest s_k such that ``holds`` is true at s_k and at every larger swept step
    (None if it fails at the largest one, or there are no points)."""
    order = np.argsort(np.asarray(steps))
    s = np.asarray(steps)[order]
    h = np.asarray(holds, dtype=bool)[order]
    if len(s) == 0 or not h[-1]:
        return None
    k = len(h) - 1
    while k > 0 and h[k - 1]:
        k -= 1
    return int(s[k])


def below(values: Sequence[float], threshold: float, lower_is_better: bool = True) -> np.ndarray:
    """Where the condition "close enough" holds (NaN never holds)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = v <= threshold if lower_is_better else v >= threshold
    return ok & ~np.isnan(v)


def tail_ratio(steps: Sequence[int], changes: Sequence[float]) -> float:
    """Median change between neighbouring step counts over the upper half of the sweep,
    divided by the median over the lower half. A converging sampler's changes shrink with
    steps (ratio << 1); one that draws a new image each time does not (ratio ~ 1)."""
    order = np.argsort(np.asarray(steps))
    c = np.asarray(changes, dtype=np.float64)[order]
    c = c[~np.isnan(c)]
    if len(c) < 2:
        return math.nan
    half = len(c) // 2
    lo, hi = np.median(c[:half]), np.median(c[half:])
    if lo <= 0:
        return 0.0 if hi <= 0 else math.inf
    return float(hi / lo)


def curve_points(steps: Sequence[int], distance: Sequence[float], change: Sequence[float],
                 noise: Sequence[float], *, indicative: float, converged: float,
                 coherent_noise: float, coherent_change: float,
                 nonconvergence_change: float, baseline_change: float | None = None,
                 lower_is_better: bool = True) -> dict:
    """Key points of one curve (one prompt, seed, sampler, schedule, CFG scale).

    ``distance``: to the reference (NaN where the cell IS the reference: it is no evidence);
    ``change``: to the next swept step count (the last point repeats the previous change);
    ``noise``: residual-noise estimate of each image.

    The conditions are nested, so the points are ordered by construction (converged =>
    coherent => indicative for every cell, hence indicative <= coherent <= converged):
    - indicative: distance <= ``indicative``;
    - coherent: indicative AND noise <= ``coherent_noise`` AND change <= ``coherent_change``
      (close to the final picture, no residual noise, stable between step counts);
    - converged: coherent AND distance <= ``converged``.
    ``coherent_heuristic`` is the noise-and-stability condition alone (no reference), the
    quantity calibrated against the analytic model's ground truth.

    ``does_not_converge`` is true when neither the converged point nor settling between
    neighbours (change <= ``converged``) is reached AND the change between the two largest
    step counts is still large: larger than ``baseline_change`` (the largest change of the
    deterministic samplers between the same two step counts on the same prompt/seed/cfg,
    :func:`deterministic_baseline`; never below ``converged``) or, without one, at least
    ``nonconvergence_change``. ODE solvers converge pathwise, so their late change is what
    convergence looks like on this picture at these step counts.
    """
    steps = list(steps)
    d = np.asarray(distance, dtype=np.float64)
    has = ~np.isnan(d)
    s_ref = [s for s, h in zip(steps, has, strict=False) if h]
    heur = below(noise, coherent_noise) & below(change, coherent_change)
    ind_ok = below(d, indicative, lower_is_better)
    coh_ok = ind_ok & heur
    conv_ok = coh_ok & below(d, converged, lower_is_better)
    ind, coh, conv = (earliest_from_which(s_ref, ok[has]) for ok in (ind_ok, coh_ok, conv_ok))
    settled = earliest_from_which(steps, below(change, converged))
    ratio = tail_ratio(steps, change)
    order = np.argsort(np.asarray(steps))
    last = np.asarray(change, dtype=np.float64)[order][-1] if len(steps) else math.nan
    if baseline_change is None or math.isnan(baseline_change):
        moving = bool(last >= nonconvergence_change)
    else:  # strictly more than every ODE solver (a deterministic sampler never beats itself)
        moving = bool(last > max(float(baseline_change), converged))
    never = conv is None and settled is None and moving
    return {"indicative": ind, "coherent": coh, "converged": conv,
            "coherent_heuristic": earliest_from_which(steps, heur),
            "does_not_converge": bool(never), "settled": conv is not None or settled is not None,
            "top_change": float(last), "tail_ratio": ratio}


def deterministic_baseline(top_changes: dict[str, tuple[tuple[int, int], float]],
                           deterministic: set[str]) -> dict[str, float]:
    """Per sampler of one (prompt, seed, cfg): the largest top-of-sweep change of the
    deterministic samplers that end at the same two step counts (NaN when there is none).

    ``top_changes``: sampler -> ((second largest steps, largest steps), change between them).
    Deterministic samplers are ODE solvers; their late-step change is what convergence looks
    like on this picture at these step counts, so the bar adapts to hard pictures (where
    every sampler still moves) and easy ones (where ancestral noise stands out)."""
    out = {}
    for s, (pair, _) in top_changes.items():
        vals = [c for t, (p, c) in top_changes.items()
                if t in deterministic and p == pair and not math.isnan(c)]
        out[s] = max(vals) if vals else math.nan
    return out


def forward_changes(steps: Sequence[int], change_to_next: Sequence[float]) -> np.ndarray:
    """Per step count, the change to the next one; the largest count takes the change
    from the one before it (there is no next), so the condition is defined everywhere."""
    order = np.argsort(np.asarray(steps))
    c = np.asarray(change_to_next, dtype=np.float64)[order].copy()
    if len(c) >= 2:
        c[-1] = c[-2]
    out = np.empty_like(c)
    out[order] = c
    return out


#: the interval of a median over seeds: distribution-free, from order statistics (the
#: number of seeds at or below the median is Binomial(n, 1/2)), at least this coverage
#: where n allows it; with fewer seeds the widest one (the per-seed range) and its coverage
CI_LEVEL = 0.95


def median_interval(n: int, level: float = CI_LEVEL) -> tuple[int, int, float]:
    """1-based order statistics (l, u) with P(x(l) <= median <= x(u)) >= ``level`` for n
    values, as narrow as possible, and their exact coverage 1 - 2 P(B <= l - 1),
    B ~ Binomial(n, 1/2). With too few values for ``level`` (n < 6 at 0.95): (1, n) and
    its coverage 1 - 2^(1-n)."""
    if n < 1:
        return 0, 0, math.nan
    cdf = binom.cdf(np.arange(n + 1), n, 0.5)
    ok = [k for k in range(1, (n + 1) // 2 + 1) if 1 - 2 * cdf[k - 1] >= level - 1e-12]
    lo = max(ok) if ok else 1
    return lo, n + 1 - lo, float(1 - 2 * cdf[lo - 1])


def aggregate(points_steps: Sequence[int | None], sweep_max: float = math.inf) -> dict:
    """Median over seeds and its interval, with "never within the sweep" CENSORED (known only
    to lie above ``sweep_max``), never counted as a number.

    Every censored seed lies above every reached one, so the Kaplan-Meier estimate is the
    empirical distribution up to the sweep's end, and its median is the smallest reached
    step by which at least half the seeds have reached the point: the ceil(n/2)-th smallest,
    a step some seed reached (never an average of two step counts). When fewer than half
    reach it the median is "> sweep_max" (NaN, ``censored`` true). The interval
    (:func:`median_interval`) is read off the same order statistics; a bound beyond the
    reached seeds is NaN ("> sweep_max")."""
    n = len(points_steps)
    reached = np.sort(np.array([p for p in points_steps if p is not None], dtype=np.float64))
    k = (n + 1) // 2
    l_idx, u_idx, level = median_interval(n)

    def order_stat(i: int) -> float:
        return float(reached[i - 1]) if 1 <= i <= len(reached) else math.nan

    return {"n_seeds": n, "n_reached": int(len(reached)), "median": order_stat(k),
            "censored": bool(n) and k > len(reached),
            "ci_lo": order_stat(l_idx), "ci_hi": order_stat(u_idx), "ci_level": level,
            "sweep_max": sweep_max,
            "lo": float(reached[0]) if len(reached) else math.nan,
            "hi": float(reached[-1]) if len(reached) else math.nan}


def _curve_changes(cells: pd.DataFrame, to_next: pd.Series) -> dict[tuple, tuple]:
    """Per curve: (key dict, its cells sorted by steps, forward changes)."""
    out = {}
    for key, g in cells.groupby(GROUP, sort=False):
        g = g.sort_values("steps")
        ch = forward_changes(list(g.steps), [to_next.get(h, math.nan) for h in g.hash])
        out[key] = (dict(zip(GROUP, key, strict=True)), g, ch)
    return out


def seed_points(a: AnalysisConfig, dist: pd.DataFrame, cells: pd.DataFrame,
                lower_is_better: bool = True) -> pd.DataFrame:
    """The keypoints_seed table: the key points of every curve. Non-convergence is judged
    against the deterministic samplers (cells.stochastic) of the same prompt/seed/cfg."""
    d = dist[dist.metric == a.metric]
    to_ref = d[d.reference == a.reference].set_index("hash").value
    to_next = d[d.reference == "next"].set_index("hash").value
    noise = dist[dist.metric == "noise"].set_index("hash").value
    curves = _curve_changes(cells, to_next)
    tops: dict[tuple, dict] = {}
    for k, g, ch in curves.values():
        pair = tuple(g.steps.iloc[-2:]) if len(g) >= 2 else ()
        tops.setdefault((k["model"], k["prompt"], k["seed"], k["cfg"]), {})[
            (k["sampler"], k["schedule"])] = (pair, float(ch[-1]) if len(ch) else math.nan,
                                              not bool(g.stochastic.iloc[0]))
    base: dict[tuple, float] = {}
    for ctx, t in tops.items():
        flat = {f"{sm}\0{sc}": v[:2] for (sm, sc), v in t.items()}
        det = {f"{sm}\0{sc}" for (sm, sc), v in t.items() if v[2]}
        for name, v in deterministic_baseline(flat, det).items():
            base[(*ctx, *name.split("\0"))] = v
    rows = []
    for k, g, ch in curves.values():
        bl = base.get((k["model"], k["prompt"], k["seed"], k["cfg"], k["sampler"], k["schedule"]))
        p = curve_points(list(g.steps), [to_ref.get(h, math.nan) for h in g.hash], ch,
                         [noise.get(h, math.nan) for h in g.hash], indicative=a.indicative,
                         converged=a.converged, coherent_noise=a.coherent_noise,
                         coherent_change=a.coherent_change,
                         nonconvergence_change=a.nonconvergence_change, baseline_change=bl,
                         lower_is_better=lower_is_better)
        by_steps = g.set_index("steps")
        for point in POINTS:
            s = p[point]
            rows.append({**k, "metric": a.metric, "reference": a.reference, "point": point,
                         "steps": s, "nfe": by_steps.nfe.get(s, math.nan) if s else math.nan,
                         "seconds": by_steps.seconds.get(s, math.nan) if s else math.nan,
                         "does_not_converge": p["does_not_converge"], "settled": p["settled"],
                         "top_change": p["top_change"],
                         "baseline_change": math.nan if bl is None else bl,
                         "tail_ratio": p["tail_ratio"]})
    return pd.DataFrame(rows)


def aggregate_points(a: AnalysisConfig, seeds: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The keypoints table: censored median (:func:`aggregate`), its interval and the range
    over seeds (and prompts) per topic x sampler x schedule x cfg, and over all topics as
    topic "all"."""
    thr = {"indicative": f"d<={a.indicative}",
           "coherent": f"d<={a.indicative};noise<={a.coherent_noise};change<={a.coherent_change}",
           "converged": f"d<={a.converged};coherent"}
    rows = []
    both = pd.concat([seeds, seeds.assign(topic="all")], ignore_index=True)
    for (topic, sampler, schedule, cfg_scale), g in both.groupby(
            ["topic", "sampler", "schedule", "cfg"], sort=False):
        c = cells[(cells.sampler == sampler) & (cells.schedule == schedule)
                  & (cells.cfg == cfg_scale)]
        per_steps = c.groupby("steps")[["nfe", "seconds"]].median()
        conv_rows = g[g.point == "converged"]
        never = conv_rows.does_not_converge.astype(bool)
        n_never = int(never.sum())
        n_settled = int(conv_rows.settled.astype(bool).sum())
        # three-way, majority of seeds: a sampler that neither settles nor out-moves the ODE
        # solvers within the sweep is "undetermined", not silently counted as converging
        status = ("does not converge" if n_never * 2 > len(never) else
                  "converges" if n_settled * 2 > len(never) else "undetermined")
        base = {"topic": topic, "sampler": sampler, "schedule": schedule, "cfg": cfg_scale,
                "metric": a.metric, "reference": a.reference,
                "converges": n_never * 2 <= len(never), "status": status, "n_settled": n_settled,
                "top_change": float(conv_rows.top_change.median()),
                "baseline_change": float(conv_rows.baseline_change.median()),
                "tail_ratio": float(conv_rows.tail_ratio.median())}
        top = float(c.steps.max()) if len(c) else math.nan
        for point in POINTS:
            agg = aggregate([None if pd.isna(s) else int(s) for s in g[g.point == point].steps],
                            top)
            s = agg["median"]   # a step some seed reached (or NaN: above the sweep)
            rows.append({**base, "point": point, "steps": s,
                         "nfe": per_steps.nfe.get(s, math.nan),
                         "seconds": per_steps.seconds.get(s, math.nan),
                         "threshold": thr[point], "n_seeds": agg["n_seeds"],
                         "n_reached": agg["n_reached"], "steps_lo": agg["lo"],
                         "steps_hi": agg["hi"], "spread": agg["hi"] - agg["lo"],
                         "ci_lo": agg["ci_lo"], "ci_hi": agg["ci_hi"],
                         "ci_level": agg["ci_level"], "sweep_max": top})
        rows.append({**base, "point": "does_not_converge", "steps": math.nan, "nfe": math.nan,
                     "seconds": math.nan,
                     "threshold": "change_at_top>max(deterministic samplers' change_at_top, "
                                  f"converged) (absolute {a.nonconvergence_change} without them)",
                     "n_seeds": len(never), "n_reached": n_never, "steps_lo": math.nan,
                     "steps_hi": math.nan, "spread": math.nan, "ci_lo": math.nan,
                     "ci_hi": math.nan, "ci_level": math.nan, "sweep_max": math.nan})
    return pd.DataFrame(rows)
