"""Key points of one convergence curve, and their aggregation over seeds.

Every point is "the earliest swept step count FROM WHICH a condition holds at every larger
swept step count": a curve that dips under a threshold and comes back up later has not
reached the point at the dip. Pure functions on arrays, so they are tested on synthetic
curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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
    """Key points of one group.

    ``distance``: to the reference (NaN where the cell IS the reference: it is no evidence);
    ``change``: to the next swept step count (the last point repeats the previous change);
    ``noise``: residual-noise estimate of each image. Coherence uses only ``change`` and
    ``noise``, never the reference. ``does_not_converge`` is true when neither the
    converged point nor settling between neighbours is reached AND the change between the
    two largest step counts is still at least ``nonconvergence_change`` (the images keep
    moving at the top of the sweep). When ``baseline_change`` is given (the largest change
    between the same two top step counts of the deterministic samplers on the same
    prompt/seed/cfg, see :func:`deterministic_baseline`), the bar is that baseline instead
    (never below ``converged``): a sampler "does not converge" when it still moves more at the
    top of the sweep than every ODE solver, which converge pathwise by construction. An
    absolute bar under-detects ancestral samplers whose fresh noise per step is small
    (smooth pictures) and flags slow deterministic ones. ``settled`` is true when the changes
    between neighbours settle below ``converged``. ``tail_ratio`` is reported alongside.
    """
    steps = list(steps)
    d = np.asarray(distance, dtype=np.float64)
    has = ~np.isnan(d)
    s_ref = [s for s, h in zip(steps, has, strict=False) if h]
    ind = earliest_from_which(s_ref, below(d[has], indicative, lower_is_better))
    conv = earliest_from_which(s_ref, below(d[has], converged, lower_is_better))
    coh_ok = below(noise, coherent_noise) & below(change, coherent_change)
    coh = earliest_from_which(steps, coh_ok)
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


def aggregate(points_steps: Sequence[int | None]) -> dict:
    """Median and spread over seeds; a seed that never reaches the point counts as +inf,
    so the median is "not reached" when more than half the seeds miss it."""
    vals = np.array([math.inf if p is None else p for p in points_steps], dtype=np.float64)
    reached = vals[np.isfinite(vals)]
    med = float(np.median(vals)) if len(vals) else math.nan
    return {"n_seeds": int(len(vals)), "n_reached": int(len(reached)),
            "median": med if math.isfinite(med) else math.nan,
            "lo": float(reached.min()) if len(reached) else math.nan,
            "hi": float(reached.max()) if len(reached) else math.nan}
