"""Key-point measures against the analytic model's ground truth, chosen on one split and
scored on held-out seeds AND prompts (issue 27).

The study is the default study with six seeds per prompt (1,920 cells):

    .venv/bin/convergence run study=default seeds_per_prompt=6 name=keypoint_truth
    .venv/bin/python benchmarks/keypoint_truth.py [--out results/measured/keypoint_truth.csv] [OVERRIDES...]

Every cell below its curve's highest step count (that cell is the reference: no evidence)
gets three ground truths, from what only the analytic model knows:

- indicative: the picture sits in the same mixture component (picture) as its reference,
  the component holding the most posterior mass at the model's sigma_min;
- coherent: it lies in the typical set of some component: squared Mahalanobis / d to the
  nearest one at most 4 and one component holding >= 0.99 of the posterior (the current
  ``truth_*`` settings), whatever the reference;
- converged (deterministic samplers only: stochastic ones have no pathwise limit): the
  8-bit picture is within one level of the exact limit's (exact-denoised) in all but 1 %
  of its pixels;

and the deployable measures, which see only pictures: LPIPS (alex) and rel_rmse to the
reference; the residual noise (Immerkaer) relative to the picture's std (today's
``noise``) and in absolute 8-bit levels; the fraction of clipped values; the fraction of
pixels more than one 8-bit level from the reference ("visible"). For each point and
candidate rule a threshold is chosen by balanced accuracy on the calibration split (topics
anime, food, animals; the first three seeds of each prompt) and scored on the held-out
split (topics nature, people; the last three seeds), which shares neither seeds nor
prompts with it. Today's definitions (rel_rmse <= 0.1, <= 0.015; noise <= 0.4 and change
<= 0.4) are scored on the held-out split too.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from convergence.analysis import _exact_model
from convergence.analysis.calibration import cell_truths, score
from convergence.analysis.distances import compute_distances
from convergence.analysis.inputs import load_cells
from convergence.analysis.keypoints import forward_changes
from convergence.analysis.pictures import load_pictures, picture_range
from convergence.analysis.tables import GROUP
from convergence.config import compose_config

OVERRIDES = ["study=default", "seeds_per_prompt=6", "name=keypoint_truth",
             "analysis.metrics=[rel_rmse,lpips,visible]"]
CALIBRATION_TOPICS = ("anime", "food", "animals")


def measure(overrides: list[str]) -> pd.DataFrame:
    """Per cell: the ground truths (analysis/calibration.py) and the candidate measures,
    computed by the analysis' own distances stage."""
    cfg = compose_config(overrides)
    a = cfg.analysis
    store, cells = load_cells(cfg)
    samples = np.stack([store.load_sample(h) for h in cells.hash]).astype(np.float64)
    model = _exact_model(cfg, cells, store.root)
    dist, _ = compute_distances(a, store, cells, samples, model)
    df = cells[[*GROUP, "steps", "stochastic"]].copy()
    truth = cell_truths(a, model, dist, samples, cells)
    for point in ("indicative", "coherent", "converged"):
        df[f"truth_{point}"] = truth[point].to_numpy()

    def values(metric: str, reference: str) -> np.ndarray:
        d = dist[(dist.metric == metric) & (dist.reference == reference)].set_index("hash").value
        return d.reindex(cells.hash).to_numpy(np.float64)

    for metric in ("lpips", "rel_rmse", "visible"):
        df[metric] = values(metric, a.reference)
    df["noise_levels"] = values("noise", "self")
    df["clipped"] = values("clipped", "self")
    # today's coherence: noise relative to the picture's own std, and rel_rmse to the next
    shown, _ = load_pictures(store, cells, samples)
    lo, hi = picture_range(cells)
    df["noise"] = df.noise_levels * (hi - lo) / 255 / shown.reshape(len(shown), -1).std(1)
    nxt = pd.Series(values("rel_rmse", "next"), index=cells.hash)
    change = np.full(len(cells), np.nan)
    for _, g in cells.groupby(GROUP):
        g = g.sort_values("steps")
        change[list(g.index)] = forward_changes(list(g.steps), nxt.reindex(g.hash).to_numpy())
    df["change"] = change
    seed_rank = cells.groupby("prompt").seed.rank(method="dense").astype(int).to_numpy()
    cal = df.topic.isin(CALIBRATION_TOPICS).to_numpy() & (seed_rank <= 3)
    held = ~df.topic.isin(CALIBRATION_TOPICS).to_numpy() & (seed_rank > 3)
    df["split"] = np.where(cal, "calibration", np.where(held, "held-out", "unused"))
    return df


#: candidate rules: point -> name -> (measures, grid per measure); a rule holds where every
#: measure is at most its threshold
def _grid(v: pd.Series) -> np.ndarray:
    return np.unique(np.quantile(v.dropna(), np.linspace(0, 1, 101)))


RULES = {
    "indicative": {"lpips": ("lpips",), "rel_rmse": ("rel_rmse",)},
    "coherent": {"noise_levels+clipped": ("noise_levels", "clipped"),
                 "noise (relative)": ("noise",)},
    "converged": {"visible": ("visible",), "rel_rmse": ("rel_rmse",)},
}
TODAY = {"indicative": {"rel_rmse": 0.1}, "coherent": {"noise": 0.4, "change": 0.4},
         "converged": {"rel_rmse": 0.015}}


def calibrate(df: pd.DataFrame) -> list[dict]:
    rows = []
    for point, rules in RULES.items():
        d = df[df[f"truth_{point}"].notna()]
        truth = d[f"truth_{point}"].astype(bool).to_numpy()
        cal, held = (d.split == "calibration").to_numpy(), (d.split == "held-out").to_numpy()
        for rule, cols in rules.items():
            best = None
            for ts in itertools.product(*[_grid(d.loc[cal, c]) for c in cols]):
                pred = np.all([d[c].to_numpy() <= t for c, t in zip(cols, ts, strict=True)], 0)
                s = score(pred[cal], truth[cal])
                if best is None or s["balanced_accuracy"] > best[0]:
                    best = (s["balanced_accuracy"], ts, pred)
            _, ts, pred = best
            rows.append({"point": point, "rule": rule,
                         "thresholds": ", ".join(f"{c}<={t:.4g}" for c, t in zip(cols, ts, strict=True)),
                         "calibration_ba": best[0], **score(pred[held], truth[held])})
        today = np.all([d[c].to_numpy() <= t for c, t in TODAY[point].items()], 0)
        if point == "coherent":  # today's coherent also needs indicative (rel_rmse <= 0.1)
            today &= d.rel_rmse.to_numpy() <= 0.1
        if point == "converged":
            today &= d.rel_rmse.to_numpy() <= 0.1
        rows.append({"point": point, "rule": "today's definition",
                     "thresholds": ", ".join(f"{c}<={t:g}" for c, t in TODAY[point].items()),
                     "calibration_ba": score(today[cal], truth[cal])["balanced_accuracy"],
                     **score(today[held], truth[held])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("overrides", nargs="*", default=OVERRIDES,
                    help=f"the study's Hydra overrides (default: {' '.join(OVERRIDES)})")
    args = ap.parse_args()
    df = measure(args.overrides)
    out = pd.DataFrame(calibrate(df))
    n = df.split.value_counts().to_dict()
    lines = [f"# {' '.join(['.venv/bin/python', *sys.argv])}",
             f"# study {' '.join(args.overrides)}: {len(df)} cells; calibration split "
             f"{n.get('calibration', 0)} (topics {', '.join(CALIBRATION_TOPICS)}, seeds 1-3 of "
             f"each prompt), held-out {n.get('held-out', 0)} (other topics, seeds 4-6)",
             "# thresholds chosen on the calibration split (best balanced accuracy); every "
             "other column scored on the held-out split",
             out.to_csv(index=False, float_format="%.4g").rstrip("\n")]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
