"""Distance-to-reference curves versus steps, NFE and seconds, one line per sampler.

Steps flatter samplers that call the model several times per step (the ComfyUI note), so
every figure shows the same curves against NFE and wall time beside steps.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from convergence.report.data import POINTS, StudyData
from convergence.report.grids import POINT_COLOURS

AXES = (("steps", "steps"), ("nfe", "model evaluations (NFE)"),
        ("seconds", "seconds per image (steps ÷ measured it/s)"))


#: below this many seeds the band is min–max; from here on the interquartile range, so
#: one outlying seed cannot paint the whole panel
IQR_FROM = 5


def curve_data(study: StudyData, topic: str | None = None) -> pd.DataFrame:
    """Median and spread over seeds (and prompts) per sampler, schedule and step count.

    ``seconds`` is steps ÷ the sampler's measured it/s over all its cells: single-cell
    timings of a millisecond-fast model jitter more than the differences between step
    counts. The reference cell itself (distance 0, or infinite PSNR) is dropped: it says
    nothing about convergence and cannot sit on a log axis."""
    d = study.distances
    d = d[d["metric"] == study.metric]
    if "reference" in d:
        d = d[d["reference"].astype(str) == study.reference]
    if topic is not None:
        d = d[d["topic"] == topic]
    d = d[np.isfinite(d["value"].astype(float))]
    cols = ["sampler", "schedule", "steps", "nfe", "seconds", "median", "lo", "hi", "n"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    c = study.cells
    per_step = (c.groupby(["sampler", "schedule"])["seconds"].sum()
                / c.groupby(["sampler", "schedule"])["steps"].sum())
    g = d.groupby(["sampler", "schedule", "steps"])
    n = g["value"].size()
    iqr = int(n.max()) >= IQR_FROM
    out = g.agg(nfe=("nfe", "median"), median=("value", "median"),
                lo=("value", (lambda v: v.quantile(0.25)) if iqr else "min"),
                hi=("value", (lambda v: v.quantile(0.75)) if iqr else "max"),
                n=("value", "size")).reset_index()
    out["seconds"] = [st * per_step.get((sa, sc), np.nan)
                      for sa, sc, st in zip(out["sampler"], out["schedule"], out["steps"], strict=False)]
    ref_steps = d.groupby(["sampler", "schedule"])["steps"].transform("max")
    at_ref = d[(d["steps"] == ref_steps) & (d["value"].astype(float) == 0)]
    drop = set(zip(at_ref["sampler"], at_ref["schedule"], at_ref["steps"], strict=False))
    keep = [(s, c, t) not in drop for s, c, t in zip(out["sampler"], out["schedule"], out["steps"], strict=False)]
    out = out[keep].reset_index(drop=True)[cols]
    out.attrs["band"] = "interquartile range" if iqr else "min–max"
    return out


def log_ticks(values: pd.Series, most: int = 7) -> list[float]:
    """1-2-5 ticks inside the data's range (finer when it spans less than a decade):
    matplotlib's own log ticks crowd into each other on a short range."""
    lo, hi = float(values.min()), float(values.max())
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8)):
        ticks = [m * 10.0 ** e for e in range(int(np.floor(np.log10(lo))) - 1,
                                              int(np.ceil(np.log10(hi))) + 1)
                 for m in mantissas if lo * 0.999 <= m * 10.0 ** e <= hi * 1.001]
        if len(ticks) >= 3:
            break
    if len(ticks) > most:
        ticks = ticks[:: int(np.ceil(len(ticks) / most))]
    return ticks or [lo, hi]


def y_top(data: pd.DataFrame, limits: dict[str, float], log: bool) -> float | None:
    """Upper y limit that keeps the converging part readable, or None when all fits.

    A decade above the upper quartile of the medians (and above every threshold); only
    applied when some median lies beyond it, and the figure then says so."""
    if not len(data):
        return None
    med = data["median"].astype(float)
    q = float(med.quantile(0.75))
    cap = max([q * (10 if log else 1.5)] + [v * 2 for v in limits.values()])
    return cap if float(med.max()) > cap and cap > 0 else None


def thresholds(study: StudyData) -> dict[str, float]:
    """The key-point thresholds the analysis used for this metric (drawn as guides)."""
    kp = study.keypoints
    if kp.empty or "threshold" not in kp:
        return {}
    kp = kp[kp["metric"] == study.metric]  # a point measured with the plotted metric
    out = {}
    for p in POINTS:  # only numeric ones: coherence is judged on noise and change, not on d
        v = pd.to_numeric(kp.loc[kp["point"] == p, "threshold"], errors="coerce").dropna()
        if len(v):
            out[p] = float(v.median())
    return out


def curve_figure(study: StudyData, topic: str | None = None, *, title: str | None = None) -> Figure:
    """One figure, three panels (vs steps, NFE, seconds); ``topic=None`` = all topics."""
    data = curve_data(study, topic)
    # fixed margins: constrained layout re-measures every tick label and costs seconds
    # a bare Figure (no pyplot): no global state, no GUI backend, works in notebooks too
    fig = Figure(figsize=(14, 4.8))  # 1260 px at 90 dpi: shown 1:1 on the page
    axes = fig.subplots(1, 3, sharey=True)
    fig.subplots_adjust(left=0.065, right=0.80, bottom=0.13, top=0.88, wspace=0.07)
    dashed = study.non_converging(topic if topic is not None else "all")
    order = {s: i for i, s in enumerate(study.samplers)}
    rows = sorted({(s, c) for s, c in zip(data["sampler"], data["schedule"], strict=False)},
                  key=lambda r: (order.get(r[0], len(order)), r[1]))
    several_schedules = data.groupby("sampler")["schedule"].nunique().max() > 1 if len(data) else False
    colours = matplotlib.colormaps["tab10" if len(rows) <= 10 else "tab20"]
    positive = bool(len(data)) and bool((data["lo"] > 0).all())
    limits = thresholds(study)
    for ax, (col, label) in zip(axes, AXES, strict=False):
        for i, (sampler, schedule) in enumerate(rows):
            c = data[(data["sampler"] == sampler) & (data["schedule"] == schedule)].sort_values("steps")
            name = f"{sampler} ({schedule})" if several_schedules else sampler
            ls = "--" if sampler in dashed else "-"
            ax.plot(c[col], c["median"], ls, marker="o", ms=3.5, lw=1.8, color=colours(i % 20),
                    label=name)
            if (c["n"] > 1).any():
                ax.fill_between(c[col], c["lo"], c["hi"], color=colours(i % 20), alpha=0.10, lw=0)
        for point, value in limits.items():
            if value > 0 or not positive:
                ax.axhline(value, color=np.array(POINT_COLOURS[point]) / 255,
                           lw=1.1, ls=":", label=f"{point} threshold")
        if len(data) and (data[col] > 0).all():
            ax.set_xscale("log")
            if col == "steps":  # label the swept step counts themselves
                ticks = sorted(data["steps"].unique())
                ax.xaxis.set_major_locator(mticker.FixedLocator(ticks))
            else:
                ax.xaxis.set_major_locator(mticker.FixedLocator(log_ticks(data[col])))
            ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(mticker.NullLocator())  # minor ticks cost seconds
        ax.set_xlabel(label, fontsize=12)
        ax.grid(True, which="major", alpha=0.35)
        ax.tick_params(labelsize=10)
    if positive:
        axes[0].set_yscale("log")
        axes[0].yaxis.set_minor_locator(mticker.NullLocator())
    top = y_top(data, limits, positive)
    if top is not None:  # a diverging sampler (1e8 at 4 steps) would flatten every other line
        axes[0].set_ylim(top=top)
        axes[0].text(0.98, 0.98, f"↑ off scale: up to {data['median'].max():.2g}", ha="right",
                     va="top", transform=axes[0].transAxes, fontsize=9, color="0.3", zorder=5,
                     bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 2})
    axes[0].set_ylabel(f"{study.metric} to the reference ({study.reference})", fontsize=12)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.81, 0.5), fontsize=10,
                   frameon=False, title="sampler" + (" (- - does not converge)" if dashed else ""),
                   title_fontsize=10)
    n = int(data["n"].max()) if len(data) else 0
    where = f"topic: {topic}" if topic is not None else "all topics"
    fig.suptitle(title or f"{where} — median over {n} seed{'s' * (n != 1)}"
                 f"{' and prompts' if topic is None else ''}, band = {data.attrs.get('band', 'min–max')}",
                 fontsize=14)
    if not len(data):
        axes[1].text(0.5, 0.5, f"no {study.metric} distances", ha="center", transform=axes[1].transAxes)
    return fig


def write_curves(study: StudyData, out_dir: Path) -> list[tuple[str, Path, Path]]:
    """Write the all-topics summary and one figure per topic, as PNG and SVG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for topic in [None, *study.topics]:
        fig = curve_figure(study, topic)
        stem = "curves_all" if topic is None else "curves_" + "".join(
            c if c.isalnum() or c in "-_" else "_" for c in str(topic))[:40]
        png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
        fig.savefig(png, dpi=90)
        fig.savefig(svg)
        written.append(("all topics" if topic is None else str(topic), png, svg))
    return written
