"""Calibration of the coherence heuristic against the analytic model's ground truth."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from convergence.analysis.keypoints import forward_changes
from convergence.analysis.tables import GROUP
from convergence.config.schema import AnalysisConfig

#: change bounds tried besides the configured one (metric units: rel_rmse by default)
CHANGE_GRID = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6)
#: noise bounds tried besides the configured one and the deciles of the study's estimates
NOISE_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)


def ground_truth(a: AnalysisConfig, model, samples: np.ndarray, cells: pd.DataFrame) -> np.ndarray:
    """coherent = Mahalanobis/d to the nearest component <= truth_mahalanobis (near a mode,
    no residual noise) AND one picture holds >= truth_responsibility of the posterior at the
    model's sigma_min (not a blend of two pictures)."""
    x = torch.from_numpy(samples).to(torch.float64)
    mahal = model.mahalanobis_per_dim(x)[0].numpy()
    uncond = model.encode_prompts(list(cells.prompt), list(cells.topic)).uncond
    resp = model.responsibilities(x, model.sigma_min, uncond).max(1).values.numpy()
    return (mahal <= a.truth_mahalanobis) & (resp >= a.truth_responsibility)


def calibration_table(a: AnalysisConfig, model, dist: pd.DataFrame, samples: np.ndarray,
                      cells: pd.DataFrame) -> pd.DataFrame:
    """The coherence heuristic (noise and change, no reference) against the ground truth over
    every cell of the study; the configured thresholds first (``configured``), then a grid."""
    truth = ground_truth(a, model, samples, cells)
    d = dist[dist.metric == a.metric]
    nxt = d[d.reference == "next"].set_index("hash").value
    noise = dist[dist.metric == "noise"].set_index("hash").value.reindex(cells.hash).to_numpy()
    change = np.full(len(cells), math.nan)
    for _, g in cells.groupby(GROUP):
        g = g.sort_values("steps")
        change[list(g.index)] = forward_changes(list(g.steps), [nxt.get(h, math.nan) for h in g.hash])
    rows = []
    grid = sorted({a.coherent_noise, *NOISE_GRID, *np.round(np.quantile(noise, np.linspace(0.05, 0.95, 10)), 4)})
    for tn in grid:
        for tc in sorted({a.coherent_change, *CHANGE_GRID}):
            pred = (noise <= tn) & (change <= tc)
            tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
            fn, tnn = int((~pred & truth).sum()), int((~pred & ~truth).sum())
            rows.append({"coherent_noise": tn, "coherent_change": tc,
                         "truth_mahalanobis": a.truth_mahalanobis,
                         "truth_responsibility": a.truth_responsibility, "tp": tp, "fp": fp,
                         "fn": fn, "tn": tnn, "accuracy": (tp + tnn) / len(cells),
                         "precision": tp / (tp + fp) if tp + fp else math.nan,
                         "recall": tp / (tp + fn) if tp + fn else math.nan,
                         # mean of recall and specificity: robust to the class imbalance
                         "balanced_accuracy": (tp / max(tp + fn, 1) + tnn / max(tnn + fp, 1)) / 2,
                         "configured": tn == a.coherent_noise and tc == a.coherent_change})
    out = pd.DataFrame(rows)
    return pd.concat([out[out.configured], out[~out.configured]], ignore_index=True)
