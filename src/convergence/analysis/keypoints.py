"""Key points: per curve (one prompt and seed) first, then aggregated over seeds.

Every point is "the earliest swept step count FROM WHICH a condition holds at every larger
swept step count": a curve that dips under a threshold and comes back up later has not
reached the point at the dip. Each point has its own measure (docs/analysis.md
"Definitions"): indicative a perceptual distance to the reference (LPIPS), coherent the
picture's own residual noise and saturation (no reference), converged the fraction of
pixels visibly (more than one 8-bit level) away from the reference. Pure functions on
arrays, so they are tested on synthetic curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class CurveMeasures:
    """One curve's measures, one value per swept step count (in the order of ``steps``)."""

    steps: list[int]
    #: the indicative metric to the reference (NaN where the cell IS the reference)
    indicative: np.ndarray
    #: the converged metric to the reference (NaN there too)
    converged: np.ndarray
    #: the converged metric to the next swept step count (:func:`forward_changes`)
    change: np.ndarray
    #: residual noise in 8-bit levels, and the fraction of clipped values (no reference)
    noise: np.ndarray
    clipped: np.ndarray


def coherent_holds(a: AnalysisConfig, noise: Sequence[float], clipped: Sequence[float]) -> np.ndarray:
    """The reference-free coherence condition: little residual noise, little saturation."""
    return below(noise, a.coherent_noise) & below(clipped, a.coherent_clipped)


def curve_points(m: CurveMeasures, a: AnalysisConfig, indicative_max: float,
                 reference_coherent: bool | None = None,
                 baseline_change: float | None = None) -> dict:
    """Key points of one curve (one prompt, seed, sampler, schedule, CFG scale), each by its
    own definition (docs/analysis.md "Definitions"):

    - indicative: the indicative metric (LPIPS) to the reference at most ``indicative_max``;
    - coherent: :func:`coherent_holds`, whatever the reference (the reference cell counts);
    - converged: the converged metric (pixels visibly changed) to the reference at most
      ``a.converged``, and indicative, and coherent where the reference is
      (``reference_coherent``; None: as measured at the curve's largest step count): only
      the nesting that follows from the definitions; indicative and coherent are independent.

    ``does_not_converge`` is true when neither the converged point nor settling between
    neighbours (change <= ``a.converged``) is reached AND the change between the two largest
    step counts is still large: larger than ``baseline_change`` (the largest change of the
    deterministic samplers between the same two step counts on the same prompt/seed/cfg,
    :func:`deterministic_baseline`; never below ``a.converged``) or, without one, at least
    ``a.nonconvergence_change``. ODE solvers converge pathwise, so their late change is what
    convergence looks like on this picture at these step counts.
    """
    steps = list(m.steps)
    has = ~np.isnan(np.asarray(m.indicative, dtype=np.float64))
    s_ref = [s for s, h in zip(steps, has, strict=True) if h]
    ind_ok = below(m.indicative, indicative_max)
    coh_ok = coherent_holds(a, m.noise, m.clipped)
    order = np.argsort(np.asarray(steps))
    if reference_coherent is None:
        reference_coherent = bool(coh_ok[order[-1]]) if len(steps) else False
    conv_ok = below(m.converged, a.converged) & ind_ok & (coh_ok | (not reference_coherent))
    ind, conv = (earliest_from_which(s_ref, ok[has]) for ok in (ind_ok, conv_ok))
    coh = earliest_from_which(steps, coh_ok)
    settled = earliest_from_which(steps, below(m.change, a.converged))
    ratio = tail_ratio(steps, m.change)
    last = np.asarray(m.change, dtype=np.float64)[order][-1] if len(steps) else math.nan
    if baseline_change is None or math.isnan(baseline_change):
        moving = bool(last >= a.nonconvergence_change)
    else:  # strictly more than every ODE solver (a deterministic sampler never beats itself)
        moving = bool(last > max(float(baseline_change), a.converged))
    never = conv is None and settled is None and moving
    return {"indicative": ind, "coherent": coh, "converged": conv,
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


def indicative_rule(a: AnalysisConfig, metrics: set[str]) -> tuple[str, float, list[str]]:
    """(metric, threshold, notes) of the indicative point: ``a.indicative_metric`` (LPIPS)
    where the distances have it, else the fallback, with one note saying so."""
    if a.indicative_metric in metrics:
        return a.indicative_metric, a.indicative, []
    return a.indicative_fallback_metric, a.indicative_fallback, [
        f"indicative: no {a.indicative_metric} distances (its weights are not cached: README "
        f"'LPIPS offline'); measured with {a.indicative_fallback_metric} <= "
        f"{a.indicative_fallback:g} instead"]


def measured_against(dist: pd.DataFrame, reference: str) -> set[str]:
    """The metrics the distances table has against ``reference``."""
    return set(dist.metric[dist.reference == reference].unique())


def point_metrics(a: AnalysisConfig, indicative_metric: str) -> dict[str, str]:
    """The metric column of each point's rows (keypoints_seed, keypoints)."""
    return {"indicative": indicative_metric, "coherent": "noise+clipped",
            "converged": a.converged_metric}


def thresholds(a: AnalysisConfig, indicative_metric: str, indicative_max: float) -> dict[str, str]:
    """Each point's condition as text (the keypoints table's threshold column)."""
    coherent = f"noise<={a.coherent_noise:g} levels;clipped<={a.coherent_clipped:g}"
    return {"indicative": f"{indicative_metric}<={indicative_max:g}", "coherent": coherent,
            "converged": f"{a.converged_metric}<={a.converged:g};indicative;"
                         "coherent where the reference is"}


def seed_points(a: AnalysisConfig, dist: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The keypoints_seed table: the key points of every curve. Non-convergence is judged
    against the deterministic samplers (cells.stochastic) of the same prompt/seed/cfg."""
    ind_metric, ind_max, _ = indicative_rule(a, measured_against(dist, a.reference))
    names = point_metrics(a, ind_metric)

    def values(metric: str, reference: str) -> pd.Series:
        d = dist[(dist.metric == metric) & (dist.reference == reference)]
        return d.set_index("hash").value

    to_ref, conv_ref = values(ind_metric, a.reference), values(a.converged_metric, a.reference)
    to_next = values(a.converged_metric, "next")
    noise, clipped = values("noise", "self"), values("clipped", "self")
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
        m = CurveMeasures(list(g.steps), *(np.array([v.get(h, math.nan) for h in g.hash])
                                           for v in (to_ref, conv_ref)), ch,
                          *(np.array([v.get(h, math.nan) for h in g.hash])
                            for v in (noise, clipped)))
        p = curve_points(m, a, ind_max, baseline_change=bl)
        by_steps = g.set_index("steps")
        for point in POINTS:
            s = p[point]
            rows.append({**k, "metric": names[point], "reference": a.reference, "point": point,
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
    ind_metric = seeds[seeds.point == "indicative"].metric.iloc[0] if len(seeds) else a.indicative_metric
    ind_max = a.indicative if ind_metric == a.indicative_metric else a.indicative_fallback
    thr = thresholds(a, ind_metric, ind_max)
    names = point_metrics(a, ind_metric)
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
                "reference": a.reference, "converges": n_never * 2 <= len(never), "status": status, "n_settled": n_settled,
                "top_change": float(conv_rows.top_change.median()),
                "baseline_change": float(conv_rows.baseline_change.median()),
                "tail_ratio": float(conv_rows.tail_ratio.median())}
        top = float(c.steps.max()) if len(c) else math.nan
        for point in POINTS:
            agg = aggregate([None if pd.isna(s) else int(s) for s in g[g.point == point].steps],
                            top)
            s = agg["median"]   # a step some seed reached (or NaN: above the sweep)
            rows.append({**base, "metric": names[point], "point": point, "steps": s,
                         "nfe": per_steps.nfe.get(s, math.nan),
                         "seconds": per_steps.seconds.get(s, math.nan),
                         "threshold": thr[point], "n_seeds": agg["n_seeds"],
                         "n_reached": agg["n_reached"], "steps_lo": agg["lo"],
                         "steps_hi": agg["hi"], "spread": agg["hi"] - agg["lo"],
                         "ci_lo": agg["ci_lo"], "ci_hi": agg["ci_hi"],
                         "ci_level": agg["ci_level"], "sweep_max": top})
        rows.append({**base, "metric": a.converged_metric, "point": "does_not_converge",
                     "steps": math.nan, "nfe": math.nan, "seconds": math.nan,
                     "threshold": "change_at_top>max(deterministic samplers' change_at_top, "
                                  f"converged) ({a.nonconvergence_change:g} without them)",
                     "n_seeds": len(never), "n_reached": n_never, "steps_lo": math.nan,
                     "steps_hi": math.nan, "spread": math.nan, "ci_lo": math.nan,
                     "ci_hi": math.nan, "ci_level": math.nan, "sweep_max": math.nan})
    return pd.DataFrame(rows)
