"""``convergence analyze``: distances, key points, convergence rates and the guide's claims.

A package of pure stages, each reading and writing the typed tables of
:mod:`convergence.analysis.tables`: inputs (the cells in the store) -> references and
distances -> key points per seed -> key points over seeds -> rates and limits -> claims
(and, on the analytic model, calibration). Writes to ``results/<study>/``:
distances.parquet, keypoints_seed.csv, keypoints.csv, rates.csv, claims.csv and, on the
analytic model, limits.csv and calibration.csv. Definitions and thresholds: docs/analysis.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from convergence.analysis import tables as T
from convergence.analysis.adaptive import search_column, with_adaptive_points
from convergence.analysis.calibration import calibration_table
from convergence.analysis.claims import evaluate_claims
from convergence.analysis.distances import compute_distances, noise_estimate
from convergence.analysis.inputs import load_cells
from convergence.analysis.keypoints import (
    POINTS,
    aggregate_points,
    indicative_rule,
    measured_against,
    seed_points,
)
from convergence.analysis.rates import compute_rates, limits_table
from convergence.config.schema import AnalysisConfig, Config
from convergence.core.allocator import keep_freed_memory
from convergence.core.atomic import staged_into
from convergence.core.errors import ConvergenceError
from convergence.core.registries import MODELS
from convergence.core.store import Store
from convergence.models import build_model
from convergence.run.plan import fingerprint_hash

__all__ = ["analyze_study", "noise_estimate"]


@contextmanager
def phase(name: str, enabled: bool = True) -> Iterator[None]:
    """One line per phase, with its duration when it ends (the slow ones also have bars)."""
    start = time.perf_counter()
    if enabled:
        print(f"analyze: {name} ...", flush=True)
    yield
    if enabled:
        print(f"analyze: {name} done in {time.perf_counter() - start:.1f}s", flush=True)


def _exact_model(cfg: Config, cells: pd.DataFrame, root: Path):
    """The analytic model the cells were made with, for exact references and calibration:
    the one the run recorded in the study (AnalyticModel.record), built again only for a
    study run before models were recorded; None for other models or another version."""
    if set(cells.model) != {"analytic"} or cfg.model.name != "analytic":
        return None
    # imported when needed: its pictures and kernels cost a second other models need not pay
    from convergence.models.analytic import AnalyticModel
    w, h = int(cells.width.iloc[0]), int(cells.height.iloc[0])
    model = AnalyticModel.recorded(root, w, h) or build_model(cfg.model, w, h)
    if set(cells.model_hash) != {fingerprint_hash(model.fingerprint())} or cells.width.nunique() > 1 \
            or cells.height.nunique() > 1:
        return None
    return model


def model_capabilities(name: str) -> tuple[str, ...]:
    """What the study's model declares it has (``register_model(..., capabilities=...)``),
    read from the registry without building the model."""
    try:
        return tuple(MODELS.entry(name).meta.get("capabilities", ()))
    except ConvergenceError:   # a model the registry does not know: it declares nothing
        return ()


def analyze_study(cfg: Config) -> dict[str, pd.DataFrame]:
    """Analyse the cells stored for the study and write its tables (module docstring).

    The tables are written aside and replace the previous ones together, once all of them
    are computed: a failed analysis leaves the last good one as it was."""
    keep_freed_memory()  # the metrics' large temporaries: reused, not refaulted (core/allocator.py)
    with staged_into(cfg.study_dir()) as out:
        return _analyze(cfg, out)


def _analyze(cfg: Config, out_dir: Path) -> dict[str, pd.DataFrame]:
    a = cfg.analysis
    show = cfg.progress
    with phase("loading the stored cells", show):
        store, cells = load_cells(cfg)
        samples = np.stack([store.load_sample(h) for h in cells.hash]).astype(np.float64)
    model = _exact_model(cfg, cells, store.root) if "exact" in a.references else None
    with phase(f"distances ({len(cells)} cells)", show):
        dist, notes = compute_distances(a, store, cells, samples, model, progress=show)
        dist = T.write(out_dir, "distances", dist)
    with phase("key points", show):
        notes += indicative_rule(a, measured_against(dist, a.reference))[2]
        seeds = T.write(out_dir, "keypoints_seed", with_adaptive_points(
            store.root, seed_points(a, dist, cells)))
        kp = T.write(out_dir, "keypoints", search_column(aggregate_points(a, seeds, cells),
                                                             seeds))
    with phase("rates and limits", show):
        rates = T.write(out_dir, "rates", compute_rates(a, dist, cells))
        lim = limits_table(dist, rates, a.rate_metrics[0]) if model is not None else None
        if lim is not None:
            lim = T.write(out_dir, "limits", lim)
    claims = T.write(out_dir, "claims", evaluate_claims(
        kp, seeds, dist, metric=a.metric, indicative=a.indicative, few_steps=a.few_steps,
        limits=lim, converged=a.converged, converged_metric=a.converged_metric,
        capabilities=model_capabilities(cfg.model.name)))
    out = {"distances": dist, "keypoints_seed": seeds, "keypoints": kp, "rates": rates,
           "claims": claims}
    if lim is not None:
        out["limits"] = lim
    if model is not None:
        with phase("key points against the ground truth", show):
            cal = T.write(out_dir, "calibration", calibration_table(a, model, dist, samples,
                                                                       cells))
        out["calibration"] = cal
        notes.append("key points against the analytic model's ground truth (this study's "
                     "cells; balanced accuracy): " + ", ".join(
                         f"{c.point} {c.balanced_accuracy:.3f}" for c in cal.itertuples()))
    _print_summary(a, store, kp, claims, notes, sorted(out))
    return out


def _print_summary(a: AnalysisConfig, store: Store, kp: pd.DataFrame, claims: pd.DataFrame,
                   notes: list[str], written: list[str]) -> None:
    for n in notes:
        print(n)
    t = kp[(kp.topic == "all") & kp.point.isin(POINTS)].set_index(
        ["sampler", "schedule", "cfg", "point"]).steps.unstack().reindex(columns=list(POINTS))
    t["convergence"] = kp[kp.topic == "all"].groupby(["sampler", "schedule", "cfg"]).status.first()
    rule = kp[kp.topic == "all"].drop_duplicates("point").set_index("point").threshold
    print(f"key points (median steps over seeds and topics, against the {a.reference} "
          "reference; " + "; ".join(f"{p}: {rule.get(p, '')}" for p in POINTS) + "):")
    print(t.to_string())
    print("guide's claims (and the harness's own):")
    for r in claims.itertuples():
        who = f"{r.sampler}, " if r.sampler else ""
        where = f"{r.schedule}, " if r.schedule else ""
        print(f"  [{r.verdict}] ({who}{where}cfg {r.cfg:g}, {r.source}) {r.claim} {r.value}")
    print(f"wrote {store.root}/: " + ", ".join(T.FILES[n] for n in written))
