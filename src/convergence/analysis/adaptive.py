"""The adaptive search's analysis (``search=adaptive``, :mod:`convergence.run.adaptive`):
what a probe measures, where the next probes go, and the table of the points found.

A point's condition is decided by the analysis' own :func:`~convergence.analysis.keypoints.curve_points`
at that step count, with the dense sweep's meaning of "the change to the next step count":
the change from ``s`` to ``s + 1``, so step ``s + 1`` is run only where that change can
decide the point. Bisection assumes a condition that, once it holds, keeps holding at larger
step counts (what "the earliest step from which it holds" measures).

The points go to ``keypoints_adaptive.csv`` (one row per curve and point, column ``search``
= adaptive, ``known_to`` = the bracket width in steps); the analysis puts them in place of the
sparse sweep's (:func:`with_adaptive_points`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from convergence.analysis import metrics as M
from convergence.analysis import tables as T
from convergence.analysis.distances import clipped_fraction, noise_levels
from convergence.analysis.keypoints import (
    POINTS,
    CurveMeasures,
    coherent_holds,
    curve_points,
    earliest_from_which,
    indicative_rule,
    point_metrics,
)
from convergence.analysis.pictures import load_pictures, picture_range, unit_images
from convergence.analysis.tables import GROUP
from convergence.config.schema import AnalysisConfig
from convergence.core.store import Store
from convergence.run.adaptive import Curve


class KeyPointJudge:
    """The analysis' side of the search (a :class:`convergence.run.adaptive.Judge`)."""

    def __init__(self, a: AnalysisConfig):
        self.a = a
        self._rule: PointRule | None = None

    def rule(self, curve: Curve) -> PointRule:
        """The rule, decided once, at the first curve's picture size."""
        if self._rule is None:
            self._rule = PointRule.of(self.a, min(curve.template.width, curve.template.height))
        return self._rule

    def measure(self, curve: Curve, new: set[int], store: Store) -> None:
        _measure(curve, new, store, self.rule(curve))

    def next_probes(self, curve: Curve) -> tuple[set[int], dict[str, tuple]]:
        return next_probes(curve, self.rule(curve))

    def write(self, store: Store, curves: list[Curve], found: list[dict[str, tuple]]) -> None:
        rule = self.rule(curves[0]) if curves else PointRule.of(self.a, M.LPIPS_MIN_SIZE)
        T.write(store.root, "keypoints_adaptive", points_table(curves, found, store, rule))


@dataclass(frozen=True)
class PointRule:
    """The analysis settings and the indicative metric in use (LPIPS, or its fallback where
    its weights are not cached), decided once per search."""

    a: AnalysisConfig
    indicative_metric: str
    indicative_max: float

    @classmethod
    def of(cls, a: AnalysisConfig, side: int) -> PointRule:
        usable, _ = M.usable_at([a.indicative_metric], side)
        metric, threshold, _ = indicative_rule(a, set(usable))
        return cls(a, metric, threshold)


def holds(curve: Curve, point: str, s: int, rule: PointRule, change: float | None = None) -> bool:
    """Whether ``point``'s condition holds at step count ``s``, decided by the analysis'
    own definitions; ``change`` overrides the measured change to ``s + 1``."""
    ch = curve.change.get(s, math.nan) if change is None else change
    m = CurveMeasures([s], np.array([curve.distance[s]]), np.array([curve.converged_distance[s]]),
                      np.array([ch]), np.array([curve.noise[s]]), np.array([curve.clipped[s]]))
    top_coherent = bool(coherent_holds(rule.a, [curve.noise[curve.top]],
                                       [curve.clipped[curve.top]])[0])
    return curve_points(m, rule.a, rule.indicative_max, reference_coherent=top_coherent)[point] == s


def _holds_maybe(curve: Curve, point: str, s: int, rule: PointRule) -> bool:
    """Optimistic where the change to ``s + 1`` is not measured yet (it might still pass)."""
    if s in curve.change:
        return holds(curve, point, s, rule)
    return holds(curve, point, s, rule, change=0.0)


def next_probes(curve: Curve, rule: PointRule) -> tuple[set[int], dict[str, tuple]]:
    """Step counts this curve needs next, and per point ``(steps or None, known_to)``:
    ``known_to`` is the width of the bracket the point lies in (1 = exact to one step)."""
    probed = curve.probed
    needs: set[int] = set()
    found: dict[str, tuple] = {}
    for point in POINTS:
        e = earliest_from_which(probed, [_holds_maybe(curve, point, s, rule) for s in probed])
        if e is None:  # fails at the largest probe: not reached, if that is the top
            last = probed[-1] if probed else curve.top
            if last < curve.top - 1:
                needs.add(curve.top - 1)
            found[point] = (None, curve.top - 1 - last)
            continue
        lower = [s for s in probed if s < e]
        width = e - lower[-1] if lower else 0
        if width > 1:
            needs.add(_split(curve, point, lower[-1], e, rule))
        elif e not in curve.change and (holds(curve, point, e, rule, change=0.0)
                                        != holds(curve, point, e, rule, change=math.inf)):
            needs.add(e + 1)  # the change to e + 1 decides this point
        found[point] = (e, width)
    return needs - set(curve.distance), found


def _split(curve: Curve, point: str, lo: int, hi: int, rule: PointRule) -> int:
    """The probe that splits the bracket (lo fails, hi holds). Where the point is a distance
    threshold (indicative, converged), the crossing is predicted from the bracket's two
    distances with the model d(s) = c * (s^-r - top^-r) (a power-law approach to a limit,
    measured against the curve's own top step count); bisection otherwise, and whenever the
    previous guess left more than half of its bracket, so the search never stalls. Probe
    placement only: whether a point holds is always decided by :func:`curve_points`."""
    mid = (lo + hi) // 2
    crossing = {"indicative": (curve.distance, rule.indicative_max),
                "converged": (curve.converged_distance, rule.a.converged)}.get(point)
    last = curve.brackets.get(point)
    curve.brackets[point] = hi - lo
    if crossing is None or (last is not None and 2 * (hi - lo) > last):
        return mid
    d, threshold = crossing
    guess = _crossing(lo, hi, curve.top, d[lo], d[hi], threshold)
    return mid if guess is None else min(max(guess, lo + 1), hi - 1)


def _crossing(lo: int, hi: int, top: int, d_lo: float, d_hi: float, thr: float) -> int | None:
    """Smallest integer step where d(s) = c * (s^-r - top^-r) through (lo, d_lo) and
    (hi, d_hi) is at most ``thr`` (None where the model does not fit the two points)."""
    if not (d_lo > thr >= d_hi > 0):
        return None

    def ratio(r: float) -> float:
        return (lo ** -r - top ** -r) / (hi ** -r - top ** -r) - d_lo / d_hi

    try:
        r = brentq(ratio, 1e-3, 8.0)
    except ValueError:  # no exponent in range reproduces the two distances
        return None
    c = d_hi / (hi ** -r - top ** -r)
    return math.ceil((thr / c + top ** -r) ** (-1 / r))


def _measure(curve: Curve, new: set[int], store: Store, rule: PointRule) -> None:
    """The key points' measures of the newly run step counts (their distances to the
    reference, noise, clipped fraction, and change to ``s + 1``), on each cell's picture as
    the analysis measures it (analysis/pictures.py)."""
    rows = store.load().set_index("hash", drop=False)
    for s in new:
        h = curve.cell(s).hash
        row = rows.loc[[h]]
        shown = load_pictures(store, row, store.load_sample(h).astype(np.float64)[None])[0]
        lo, hi = picture_range(row)
        curve.samples[s] = (shown, unit_images(shown, lo, hi))
        curve.noise[s] = float(noise_levels(shown, lo, hi)[0])
        curve.clipped[s] = float(clipped_fraction(shown, lo, hi)[0])
    ref = curve.samples[curve.top]
    for s in sorted(new):
        at_top = s == curve.top
        curve.distance[s] = math.nan if at_top else _between(rule.indicative_metric,
                                                              curve.samples[s], ref)
        curve.converged_distance[s] = math.nan if at_top else _between(rule.a.converged_metric,
                                                                        curve.samples[s], ref)
    for s in curve.samples:
        if s + 1 in curve.samples and s not in curve.change:
            curve.change[s] = _between(rule.a.converged_metric, curve.samples[s],
                                       curve.samples[s + 1])


def _between(metric: str, x: tuple[np.ndarray, np.ndarray], y: tuple[np.ndarray, np.ndarray]) -> float:
    """``metric`` between two (picture, unit image) pairs, on the form its space takes."""
    k = 1 if M.get_metric(metric).space == "image" else 0
    return float(M.compute(metric, x[k], y[k])[0])


def points_table(curves: list[Curve], found: list[dict[str, tuple]], store: Store,
                 rule: PointRule) -> pd.DataFrame:
    """One row per curve and key point: the analysis' per-seed columns (keypoints_seed)
    that a sparse search defines, plus ``search``, ``known_to`` (bracket width in steps:
    1 = exact, 0 = the lowest step count), the curve's probes and their NFE."""
    stored = store.load().set_index("hash")
    names = point_metrics(rule.a, rule.indicative_metric)
    rows = []
    for curve, points in zip(curves, found, strict=True):
        steps = sorted(curve.distance)
        cells = stored.reindex([curve.cell(s).hash for s in steps]).set_index(pd.Index(steps))
        base = {k: getattr(curve.template, k) for k in GROUP}
        for point in POINTS:
            s, width = points.get(point, (None, 0))
            rows.append({**base, "metric": names[point], "reference": "highest", "point": point,
                         "steps": s, "nfe": cells.nfe.get(s, math.nan) if s else math.nan,
                         "seconds": cells.seconds.get(s, math.nan) if s else math.nan,
                         "search": "adaptive", "known_to": width, "probes": len(steps),
                         "probe_steps": int(sum(steps)), "probe_nfe": float(cells.nfe.sum())})
    return pd.DataFrame(rows)


def load_points(root: Path | str) -> pd.DataFrame:
    """The adaptive key points of a study folder (empty if it has none)."""
    path = Path(root) / T.FILES["keypoints_adaptive"]
    return T.read(root, "keypoints_adaptive") if path.exists() else pd.DataFrame()


def with_adaptive_points(root: Path | str, seeds: pd.DataFrame) -> pd.DataFrame:
    """The analysis' per-seed key points (keypoints_seed) with the points an adaptive search
    pinned (same curve, metric and reference) in place of the sparse sweep's, and a column
    ``search``: adaptive where the search found the point, grid elsewhere. The rest of a
    row (non-convergence, top change) stays the analysis' over the stored cells."""
    seeds = seeds.assign(search="grid")
    found = load_points(root)
    if found.empty or seeds.empty:
        return seeds
    key = [*GROUP, "metric", "reference", "point"]
    found = found[key + ["steps", "nfe", "seconds"]].astype({"seed": "int64", "cfg": "float64"})
    merged = seeds.astype({"seed": "int64", "cfg": "float64"}).merge(
        found, on=key, how="left", suffixes=("", "_found"), indicator=True)
    hit = (merged.pop("_merge") == "both").to_numpy()
    for col in ("steps", "nfe", "seconds"):
        merged[col] = merged[col].astype("float64").where(~hit, merged[f"{col}_found"])
        del merged[f"{col}_found"]
    merged.loc[hit, "search"] = "adaptive"
    return merged


def search_column(kp: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """The keypoints table with ``search``: adaptive where every seed's point of that row
    was pinned by an adaptive search, grid where none was, mixed otherwise."""
    both = pd.concat([seeds, seeds.assign(topic="all")], ignore_index=True)
    key = ["topic", "sampler", "schedule", "cfg", "point"]
    kinds = both.groupby(key).search.agg(lambda v: v.iloc[0] if v.nunique() == 1 else "mixed")
    out = kp.merge(kinds.rename("search").reset_index(), on=key, how="left")
    out["search"] = out["search"].fillna("grid")
    return out
