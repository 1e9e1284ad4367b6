"""Analysis outputs for report tests, computed from a study's stored images.

The report tests must not depend on how `convergence analyze` picks its thresholds, so
they write the agreed files (distances.parquet, keypoints.csv, rates.csv, claims.csv)
themselves, in the layout analysis.py writes (several references, an "all" topic, a
text threshold for coherence, "does_not_converge" rows): real RMSE distances to each
group's highest step and to the next step count, key points by the plain threshold
rule. Only tests use this; the report itself reads whatever `analyze` wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from convergence.analysis import tables

GROUP = ["model", "topic", "prompt", "seed", "sampler", "schedule", "cfg"]
THRESHOLDS = {"indicative": 0.08, "coherent": 0.04, "converged": 0.01}


def _img(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel).convert("RGB"), dtype=np.float64) / 255.0


def _first_staying_below(steps: list[int], d: list[float], thr: float) -> float:
    """Earliest swept step (before the reference) from which d stays below thr."""
    hit = np.nan
    for s, v in zip(reversed(steps[:-1]), reversed(d[:-1]), strict=False):
        if v < thr:
            hit = s
        else:
            break
    return hit


def _write(root: Path, name: str, rows: list[dict]) -> None:
    """Write a table as analyze does: the schema's columns (those the fixture does not
    compute left empty), checked (the report reads only schema-valid tables)."""
    df = pd.DataFrame(rows)
    for col in tables.columns(name):
        if col not in df:
            df[col] = None
    tables.write(root, name, df)


def write_analysis(root: Path, metric: str = "rmse", thresholds: dict | None = None) -> None:
    thresholds = thresholds or THRESHOLDS
    cells = pd.read_parquet(root / "cells.parquet")
    cells = cells[cells["model_hash"] == cells["model_hash"].iloc[-1]]  # the latest model
    dist_rows, per_seed = [], []
    for key, g in cells.groupby(GROUP):
        g = g.sort_values("steps")
        ref = _img(root, g["image"].iloc[-1])
        steps = [int(s) for s in g["steps"]]
        imgs = [_img(root, p) for p in g["image"]]
        d = [float(np.sqrt(np.mean((im - ref) ** 2))) for im in imgs]
        nxt = [float(np.sqrt(np.mean((a - b) ** 2))) for a, b in zip(imgs, imgs[1:], strict=False)] + [0.0]
        for r, v, n in zip(g.itertuples(), d, nxt, strict=False):
            base = {"hash": r.hash, **dict(zip(GROUP, key, strict=False)), "steps": r.steps,
                    "nfe": r.nfe, "seconds": r.seconds, "metric": metric}
            dist_rows.append({**base, "reference": "highest", "value": v})
            dist_rows.append({**base, "reference": "next", "value": 10 * n + 1})  # not drawn
            dist_rows.append({**base, "reference": "self", "metric": "noise", "value": 5.0})
        rec = dict(zip(GROUP, key, strict=False))
        rec["indicative"] = _first_staying_below(steps, d, thresholds["indicative"])
        rec["coherent"] = _first_staying_below(steps, nxt, thresholds["coherent"])
        rec["converged"] = _first_staying_below(steps, d, thresholds["converged"])
        rec["cost"] = {int(s): (int(n), float(t)) for s, n, t in zip(g["steps"], g["nfe"], g["seconds"], strict=False)}
        per_seed.append(rec)
    _write(root, "distances", dist_rows)

    kp_rows = []
    ps = pd.DataFrame(per_seed)
    both = pd.concat([ps, ps.assign(topic="all")], ignore_index=True)
    for (topic, sampler, schedule, cfg), g in both.groupby(["topic", "sampler", "schedule", "cfg"]):
        cost = g["cost"].iloc[0]
        for point, thr in thresholds.items():
            reached = g[point].dropna()
            steps = float(np.median(reached)) if len(reached) else np.nan
            at = [s for s in sorted(cost) if s >= steps] if len(reached) else []
            nfe, sec = cost[at[0]] if at else (np.nan, np.nan)
            kp_rows.append({"topic": topic, "sampler": sampler, "schedule": schedule, "cfg": cfg,
                            "point": point, "steps": steps, "nfe": nfe, "seconds": sec,
                            "metric": metric, "reference": "highest",
                            "threshold": "noise<=0.06;change<=0.04" if point == "coherent" else thr,
                            "n_seeds": len(g), "n_reached": len(reached),
                            "spread": float(np.ptp(reached)) if len(reached) else np.nan,
                            "converges": bool(len(reached) * 2 > len(g)) if point == "converged" else True})
        kp_rows.append({"topic": topic, "sampler": sampler, "schedule": schedule, "cfg": cfg,
                        "point": "does_not_converge", "steps": np.nan, "nfe": np.nan,
                        "seconds": np.nan, "metric": metric, "threshold": "change_at_top>=0.05",
                        "reference": "highest", "n_seeds": len(g), "n_reached": 0,
                        "spread": np.nan, "converges": kp_rows[-1]["converges"]})
    _write(root, "keypoints", kp_rows)

    rate_rows = []
    dist = pd.DataFrame(dist_rows)
    dist = dist[(dist["reference"] == "highest") & (dist["metric"] == metric)]
    for (sampler, schedule, cfg), g in dist.groupby(["sampler", "schedule", "cfg"]):
        g = g[g["value"] > 0]
        if g["nfe"].nunique() < 2:
            continue
        b, loga = np.polyfit(np.log(g["nfe"]), np.log(g["value"]), 1)
        bs = [np.polyfit(np.log(s["nfe"]), np.log(s["value"]), 1)[0]
              for _, s in g.groupby("seed") if s["nfe"].nunique() > 1]
        rate_rows.append({"level": "all", "topic": "all", "sampler": sampler, "schedule": schedule, "cfg": cfg,
                          "x": "nfe", "reference": "highest", "metric": metric, "a": np.exp(loga),
                          "b": b, "b_lo": min(bs, default=b), "b_hi": max(bs, default=b),
                          "n_seeds": g["seed"].nunique(), "x_lo": g["nfe"].min(),
                          "x_hi": g["nfe"].max(), "slopes": "", "order": -b,
                          # one sampler's order accepted, the others pre-asymptotic
                          "asymptotic": not rate_rows})
    _write(root, "rates", rate_rows)
    _write(root, "claims", [{"claim": "heun converges in fewer steps than euler",
                             "measurement": "median converged steps, heun vs euler", "value": 0.5,
                             "verdict": "holds", "details": "test fixture <b>not html</b>"}])
