"""The key points' measures against the analytic model's ground truth (docs/analysis.md
"Definitions"): what each deployable condition gets right, cell by cell.

Ground truth uses what only the analytic model knows (its mixture components and the exact
limit of the sampler's ODE); the deployable conditions see only pictures. The thresholds
were chosen on a calibration split and scored on held-out seeds and prompts by
benchmarks/keypoint_truth.py, which uses these same functions; ``calibration.csv`` scores
the configured thresholds on the study at hand.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from convergence.analysis.keypoints import (
    POINTS,
    coherent_holds,
    indicative_rule,
    measured_against,
    thresholds,
)
from convergence.analysis.references import pairs
from convergence.config.schema import AnalysisConfig

#: ground truth of "converged": within one 8-bit level of the exact limit's picture in all
#: but this fraction of pixels (the "visible" metric against exact-denoised)
TRUTH_VISIBLE = 0.01

TRUTHS = {
    "indicative": "same mixture component (picture) as the reference at sigma_min",
    "coherent": "typical set of a component: Mahalanobis/d <= truth_mahalanobis and one "
                "component >= truth_responsibility of the posterior",
    "converged": f"visible (> 1 level) pixels to the exact limit <= {TRUTH_VISIBLE:g} "
                 "(deterministic samplers)",
}


def _values(dist: pd.DataFrame, metric: str, reference: str, hashes: pd.Series) -> np.ndarray:
    d = dist[(dist.metric == metric) & (dist.reference == reference)].set_index("hash").value
    return d.reindex(hashes).to_numpy(np.float64)


def cell_truths(a: AnalysisConfig, model, dist: pd.DataFrame, samples: np.ndarray,
                cells: pd.DataFrame) -> pd.DataFrame:
    """Per cell (rows of ``cells``), each point's ground truth: True/False, NaN where it is
    not defined (the reference cell itself for indicative and converged; stochastic and
    diffusers-scheduler samplers for converged, which have no exact pathwise limit)."""
    x = torch.from_numpy(samples).to(torch.float64)
    uncond = model.encode_prompts(list(cells.prompt), list(cells.topic)).uncond
    resp = model.responsibilities(x, model.sigma_min, uncond)
    component = resp.argmax(1).numpy()
    mahal = model.mahalanobis_per_dim(x)[0].numpy()
    indicative = np.full(len(cells), np.nan)
    for i, j in pairs(cells, a.reference):
        if i != j:
            indicative[i] = float(component[i] == component[j])
    coherent = ((mahal <= a.truth_mahalanobis)
                & (resp.max(1).values.numpy() >= a.truth_responsibility)).astype(np.float64)
    to_limit = _values(dist, a.converged_metric, "exact-denoised", cells.hash)
    deterministic = ~cells.stochastic.to_numpy(bool) & (cells.family != "diffusers").to_numpy()
    converged = np.where(deterministic & ~np.isnan(to_limit) & ~np.isnan(indicative),
                         (to_limit <= TRUTH_VISIBLE).astype(np.float64), np.nan)
    return pd.DataFrame({"hash": cells.hash.to_numpy(), "indicative": indicative,
                         "coherent": coherent, "converged": converged})


def cell_conditions(a: AnalysisConfig, dist: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per cell, each point's deployable condition as the key points use it (before "from
    which step on"): True/False, NaN at the reference cell for the two that need one."""
    metric, ind_max, _ = indicative_rule(a, measured_against(dist, a.reference))
    ind = _values(dist, metric, a.reference, cells.hash)
    conv = _values(dist, a.converged_metric, a.reference, cells.hash)
    coh = coherent_holds(a, _values(dist, "noise", "self", cells.hash),
                         _values(dist, "clipped", "self", cells.hash))
    has = ~np.isnan(ind)
    return pd.DataFrame({"hash": cells.hash.to_numpy(),
                         "indicative": np.where(has, ind <= ind_max, np.nan),
                         "coherent": coh.astype(np.float64),
                         "converged": np.where(has, conv <= a.converged, np.nan)})


def score(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Confusion counts, balanced accuracy (mean of recall and specificity: robust to the
    classes' imbalance), precision and recall of boolean predictions."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
    fn, tn = int((~pred & truth).sum()), int((~pred & ~truth).sum())
    recall = tp / (tp + fn) if tp + fn else math.nan
    specificity = tn / (tn + fp) if tn + fp else math.nan
    return {"n": len(pred), "positives": tp + fn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "balanced_accuracy": (recall + specificity) / 2,
            "precision": tp / (tp + fp) if tp + fp else math.nan, "recall": recall}


def calibration_table(a: AnalysisConfig, model, dist: pd.DataFrame, samples: np.ndarray,
                      cells: pd.DataFrame) -> pd.DataFrame:
    """The configured conditions against the ground truth on this study's cells, one row per
    point (where both are defined)."""
    truth = cell_truths(a, model, dist, samples, cells)
    cond = cell_conditions(a, dist, cells)
    metric, ind_max, _ = indicative_rule(a, measured_against(dist, a.reference))
    rule = thresholds(a, metric, ind_max)
    rows = []
    for point in POINTS:
        ok = truth[point].notna().to_numpy() & cond[point].notna().to_numpy()
        rows.append({"point": point, "condition": rule[point], "truth": TRUTHS[point],
                     **score(cond[point].to_numpy()[ok] == 1, truth[point].to_numpy()[ok] == 1)})
    return pd.DataFrame(rows)
