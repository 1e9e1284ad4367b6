"""Variety across seeds: how different a sampler's images of one prompt are from seed to seed.

The guide credits the ancestral samplers (K_EULER_A, K_DPM_2_A) with "a lot of
creativity/variability" and measures nothing. Here it is a number: the mean distance
between every pair of seeds at the same prompt, CFG scale, sampler and step count, in the
report's metric and in the same space as the analysis computes it (float samples for
sample-space metrics, decoded images for image metrics), so it reads on the same scale
as the convergence curves beside it.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from convergence.analysis import metrics as M
from convergence.analysis.pictures import load_pictures, picture_range, unit_images
from convergence.core.store import Store
from convergence.report.data import StudyData
from convergence.report.tables import ALL, Table, _fmt_num, _ratio, _row_label

KEYS = ["topic", "prompt", "cfg", "sampler", "schedule", "steps"]


def _loader(study: StudyData, space: str):
    """A group's arrays as the analysis measures the metric: rate metrics on the float
    samples, other metrics on the cells' pictures (analysis/pictures.py; image metrics in
    [0, 1]); cells stored without a display range: float samples and PNGs."""
    store = Store(study.root)
    rates = study.study.get("config", {}).get("analysis", {}).get("rate_metrics", ["rmse"])

    def load(g: pd.DataFrame) -> np.ndarray:
        if "display_lo" not in g:
            return np.stack([(store.load_sample if space == "sample" else store.load_image)(h)
                             for h in g["hash"]])
        samples = np.stack([store.load_sample(h) for h in g["hash"]]).astype(np.float64)
        if space == "sample" and study.metric in rates:
            return samples
        shown = load_pictures(store, g, samples)[0]
        return shown if space == "sample" else unit_images(shown, *picture_range(g))

    return load


def pairwise_variety(study: StudyData) -> pd.DataFrame:
    """One row per prompt × cfg × sampler × schedule × steps with two seeds or more:
    the mean (and spread) of the metric over all pairs of seeds."""
    spec = M.get_metric(study.metric)
    load = _loader(study, spec.space)
    rows = []
    for key, g in study.cells.groupby(KEYS, sort=False):
        g = g.drop_duplicates("seed")
        if len(g) < 2:
            continue
        x = load(g)
        i, j = np.array(list(combinations(range(len(g)), 2))).T
        # both directions: a metric scaled by its reference (rel_rmse) is not symmetric
        d = (M.compute(study.metric, x[i], x[j]) + M.compute(study.metric, x[j], x[i])) / 2
        rows.append({**dict(zip(KEYS, key, strict=True)), "metric": study.metric,
                     "n_seeds": len(g), "n_pairs": len(d), "mean": float(d.mean()),
                     "min": float(d.min()), "max": float(d.max())})
    return pd.DataFrame(rows, columns=[*KEYS, "metric", "n_seeds", "n_pairs", "mean", "min", "max"])


def variety_table(study: StudyData) -> Table | None:
    """Per sampler and topic: the variety at the study's highest step count (the image a
    user keeps), and over all topics; the per-step values are in the CSV."""
    v = pairwise_variety(study)
    if v.empty:
        return None
    top = v[v["steps"] == v.groupby(["topic", "sampler", "schedule", "cfg"])["steps"]
            .transform("max")]
    keys = ["sampler", "schedule", "cfg"]
    per_topic = top.groupby([*keys, "topic"], sort=False)["mean"].mean().unstack("topic")
    per_topic[ALL] = top.groupby(keys, sort=False)["mean"].mean()
    per_topic = per_topic.reset_index()
    order = {s: i for i, s in enumerate(study.samplers)}
    per_topic = per_topic.sort_values("sampler", key=lambda s: s.map(order)).reset_index(drop=True)
    topics = [t for t in study.topics if t in per_topic]
    base = per_topic.loc[per_topic["sampler"] == "euler", ALL]
    shown = pd.DataFrame({"sampler": _row_label(study, per_topic),
                          **{t: per_topic[t].map(_fmt_num) for t in topics},
                          "all topics": per_topic[ALL].map(_fmt_num),
                          "vs euler": (per_topic[ALL] / float(base.iloc[0])).map(_ratio)
                          if len(base) else "—"})
    n = int(v["n_seeds"].max())
    note = (f"Mean {study.metric} between every pair of seeds ({n} seeds, {n * (n - 1) // 2} pairs "
            "per prompt) at the same prompt, CFG scale and step count, at each sampler's highest "
            "swept step count. Higher = the seeds give more different pictures. Every step "
            "count is in variety.csv.")
    return Table("variety", f"Variety across seeds ({study.metric} between seeds, highest step "
                 "count)", v, shown, note)
