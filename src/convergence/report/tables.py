"""The guide's TL;DR tables, computed from the store and the analysis.

Each function returns a numeric DataFrame (written as CSV: every number in the report
can be re-used) and :func:`display` turns it into short strings for the HTML page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from convergence.analysis.rates import MIN_BOOTSTRAP_SEEDS, SLOPE_TOL, SLOPE_WINDOW
from convergence.report.data import POINTS, StudyData

#: the guide's own it/s table (M1 Max, 512×512, 3-sample average), for comparison only
GUIDE_ITS = {"ddim": 1.89, "plms": 1.86, "euler": 1.86, "lms": 1.91, "heun": 0.95,
             "dpm_2": 0.95, "dpm_2_ancestral": 0.95, "euler_ancestral": 1.86}
BASELINE = "euler"


@dataclass
class Table:
    """A titled table for the page, with the numeric frame behind it."""

    key: str
    title: str
    data: pd.DataFrame
    shown: pd.DataFrame
    note: str = ""
    #: sub-tables shown as collapsible groups: (title, shown rows, open at first)
    groups: list[tuple[str, pd.DataFrame, bool]] = field(default_factory=list)


#: keypoints.csv's topic for the median over all topics
ALL = "all"


def seconds_per_nfe(study: StudyData) -> dict[tuple[str, str], float]:
    """Each sampler's measured seconds per model evaluation, over all its cells."""
    c = study.cells
    g = c.groupby(["sampler", "schedule"])
    return (g["seconds"].sum() / g["nfe"].sum()).to_dict()


def _kp(study: StudyData) -> pd.DataFrame:
    """Key-point rows (not the 'does_not_converge' summary rows).

    ``seconds`` becomes NFE × the sampler's measured seconds per NFE: the time of one
    step count's cells jitters on a busy machine (the analysis' median is kept as
    ``seconds_measured``), and a cost model this simple is what the guide's example uses."""
    kp = study.keypoints
    kp = kp[kp["point"].isin(POINTS)].copy()
    spn = seconds_per_nfe(study)
    if "seconds" in kp:
        kp["seconds_measured"] = kp["seconds"]
    kp["seconds"] = [n * spn.get((a, b), np.nan)
                     for n, a, b in zip(kp["nfe"], kp["sampler"], kp["schedule"], strict=True)]
    return kp


def _topics(study: StudyData) -> list[str]:
    """The study's topics, plus the analysis' all-topics row when it wrote one."""
    return study.topics + ([ALL] if (study.keypoints.get("topic") == ALL).any() else [])


def _fmt_threshold(v) -> str:
    try:
        return _fmt_num(float(v))
    except (TypeError, ValueError):
        return str(v).replace(";", ", ")


def _row_label(study: StudyData, df: pd.DataFrame) -> pd.Series:
    """sampler, plus schedule / cfg only when the study varies them for one sampler."""
    label = df["sampler"].astype(str)
    if study.cells.groupby("sampler")["schedule"].nunique().max() > 1:  # not just native ones
        label = label + " · " + df["schedule"].astype(str)
    if study.cells["cfg"].nunique() > 1:
        label = label + " · cfg " + df["cfg"].map(lambda v: f"{float(v):g}")
    return label


def _fmt_steps(v) -> str:
    return "—" if pd.isna(v) else f"{float(v):g}"


def _fmt_num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)) or pd.isna(v):
        return "—"
    v = float(v)
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    return f"{v:.{max(0, digits - 1 - mag)}f}" if -3 <= mag < 6 else f"{v:.{digits}g}"


def _ratio(v) -> str:
    return "—" if pd.isna(v) else f"{float(v):.2f}×"


def _not_converging(r) -> bool:
    return str(getattr(r, "converges", True)).lower() in ("false", "0", "0.0")


def keypoint_tables(study: StudyData) -> list[Table]:
    """Per key point: the step count where each sampler reaches it, per topic.

    A cell reads '20 (2/3)' when only 2 of 3 seeds got there; '—' when none did."""
    kp = _kp(study).copy()
    kp["row"] = _row_label(study, kp)
    keys = study.cells.drop_duplicates(["sampler", "schedule", "cfg"])  # plan order
    rows = list(dict.fromkeys(_row_label(study, keys)))
    topics = _topics(study)
    tables = []
    for point in POINTS:
        sub = kp[kp["point"] == point]
        shown = pd.DataFrame(index=rows, columns=topics, dtype=object).fillna("—")
        for r in sub.itertuples():
            if r.topic not in topics or r.row not in shown.index:
                continue
            text = _fmt_steps(r.steps)
            top = getattr(r, "sweep_max", math.nan)
            if text == "—" and point == "converged" and _not_converging(r):
                text = "does not converge"
            elif text == "—" and pd.notna(top):
                text = f"> {_fmt_steps(top)}"   # censored: fewer than half the seeds got there
            elif text != "—" and hasattr(r, "n_reached") and hasattr(r, "n_seeds") \
                    and pd.notna(r.n_reached) and int(r.n_reached) < int(r.n_seeds):
                text += f" ({int(r.n_reached)}/{int(r.n_seeds)})"
            shown.loc[r.row, r.topic] = text
        shown.index.name = "sampler"
        shown = shown.rename(columns={ALL: "all topics"})
        thr = sub["threshold"].dropna().unique() if "threshold" in sub else []
        note = (f"threshold ({study.metric} vs {study.reference}): "
                f"{', '.join(_fmt_threshold(t) for t in thr) or '?'}; steps = median over seeds "
                "(a seed that never reaches it is censored above the sweep: '> max' when fewer "
                "than half do); (k/n) = only k of n seeds reached it; keypoints.csv has the "
                "median's interval (ci_lo, ci_hi)")
        tables.append(Table(f"keypoints_{point}", f"{point.capitalize()} step per sampler × topic",
                            sub.drop(columns=["row"]), shown.reset_index(), note))
    return tables


def _slope(x: pd.Series, y: pd.Series) -> float:
    """Per-step cost from a line fit, so Heun's 2n-1 NFE reads as 2 per step, not 1.75."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(np.unique(x)) < 2:
        return float(np.median(y / x))
    return float(np.polyfit(x, y, 1)[0])


def speed_table(study: StudyData) -> Table:
    """it/s, NFE per step and seconds per NFE per sampler, absolute and relative to euler."""
    c = study.cells
    rows = []
    for (sampler, schedule), g in c.groupby(["sampler", "schedule"], sort=False):
        sec = float(g["seconds"].sum())
        rows.append({
            "sampler": sampler, "schedule": schedule,
            "nfe_per_step": _slope(g["steps"], g["nfe"]),
            "model_evals_per_step": _slope(g["steps"], g["model_evals"]),
            "it_per_s": float(g["steps"].sum()) / sec if sec > 0 else np.nan,
            "ms_per_nfe": 1000 * sec / float(g["nfe"].sum()),
            "model_share": float(g["model_seconds"].sum()) / sec if sec > 0 else np.nan,
            "guide_it_per_s": GUIDE_ITS.get(sampler, np.nan),
        })
    df = pd.DataFrame(rows)
    order = {s: i for i, s in enumerate(study.samplers)}
    df = df.sort_values("sampler", key=lambda s: s.map(order)).reset_index(drop=True)
    base = df[df["sampler"] == BASELINE]
    for col in ("nfe_per_step", "it_per_s", "ms_per_nfe", "guide_it_per_s"):
        ref = float(base[col].iloc[0]) if len(base) else np.nan
        df[f"{col}_vs_{BASELINE}"] = df[col] / ref
    shown = pd.DataFrame({
        "sampler": df["sampler"],
        "schedule": df["schedule"],
        "NFE / step": df["nfe_per_step"].map(lambda v: "—" if pd.isna(v) else f"{v:.2f}"),
        "NFE / step vs euler": df[f"nfe_per_step_vs_{BASELINE}"].map(_ratio),
        "it/s (measured)": df["it_per_s"].map(_fmt_num),
        "it/s vs euler": df[f"it_per_s_vs_{BASELINE}"].map(_ratio),
        "ms / NFE": df["ms_per_nfe"].map(_fmt_num),
        "in model": df["model_share"].map(lambda v: "—" if pd.isna(v) else f"{100 * v:.0f}%"),
    })
    device = ", ".join(sorted(c["device"].astype(str).unique())) if "device" in c else "?"
    note = (f"measured on {device}, {int(c['width'].iloc[0])}×{int(c['height'].iloc[0])}; "
            "NFE/step is the slope of NFE against steps (Heun-type samplers skip the model on "
            "their last step); it/s = all steps / all seconds; 'in model' = share of time inside "
            "the denoiser (the rest is sampler overhead, large for a tiny model). "
            "Timings come from one run and move with the machine's load; NFE is exact."
            + ("" if len(base) else f" No {BASELINE} in this study: no ratios."))
    return Table("speed", "Speed per sampler: NFE per step and it/s, absolute and relative to euler",
                 df, shown, note)


def _per_sampler_topic(study: StudyData) -> pd.DataFrame:
    """Wide key-point costs: one row per topic × sampler × schedule × cfg."""
    kp = _kp(study)
    keys = ["topic", "sampler", "schedule", "cfg"]
    wide = None
    for point in POINTS:
        sub = kp[kp["point"] == point][keys + ["steps", "nfe", "seconds"]]
        sub = sub.rename(columns={c: f"{point}_{c}" for c in ("steps", "nfe", "seconds")})
        wide = sub if wide is None else wide.merge(sub, on=keys, how="outer")
    return wide if wide is not None else pd.DataFrame(columns=keys)


def cheapest_table(study: StudyData) -> Table:
    """Which sampler reaches each key point with the fewest NFE, and in the least time.

    'all topics' uses the analysis' median over all seeds and topics; without one, the
    median cost over topics of the samplers that reach the point in every topic."""
    kp = _kp(study)
    topics = study.topics
    has_all = (kp["topic"] == ALL).any()
    rows = []
    for topic in [*topics, "all topics"]:
        for point in POINTS:
            sub = kp[kp["point"] == point]
            if topic == "all topics" and has_all:  # the analysis' median over all topics
                sub = sub[sub["topic"] == ALL].dropna(subset=["nfe"])
            elif topic == "all topics":
                reached = sub.dropna(subset=["nfe"]).groupby(["sampler", "schedule", "cfg"])
                sub = reached.agg(steps=("steps", "median"), nfe=("nfe", "median"),
                                  seconds=("seconds", "median"), n=("topic", "nunique")).reset_index()
                sub = sub[sub["n"] == len(topics)]
            else:
                sub = sub[(sub["topic"] == topic)].dropna(subset=["nfe"])
            row = {"topic": topic, "point": point}
            for by in ("nfe", "seconds"):
                s = sub.dropna(subset=[by])
                if len(s):
                    best = s.loc[s[by].astype(float).idxmin()]
                    row |= {f"by_{by}_sampler": best["sampler"], f"by_{by}_steps": best["steps"],
                            f"by_{by}_nfe": best["nfe"], f"by_{by}_seconds": best["seconds"],
                            f"by_{by}_range": _seed_range(best)}
            rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("by_nfe_sampler", "by_seconds_sampler"):
        if c not in df:
            df[c] = np.nan

    def who(r, by):
        s = r.get(f"by_{by}_sampler")
        if pd.isna(s):
            return "none on most seeds"
        cost = (f"{_fmt_steps(r[f'by_{by}_nfe'])} NFE" if by == "nfe"
                else f"{_fmt_num(r[f'by_{by}_seconds'], 2)} s")
        return f"{s} — {cost} ({_fmt_steps(r[f'by_{by}_steps'])} steps{r[f'by_{by}_range']})"

    shown = pd.DataFrame({"topic": df["topic"], "key point": df["point"],
                          "cheapest in NFE": [who(r, "nfe") for r in df.to_dict("records")],
                          "cheapest in seconds": [who(r, "seconds") for r in df.to_dict("records")]})
    note = ("NFE is the portable cost (seconds depend on this machine and model size); "
            "steps are medians over seeds (censored where a seed never reaches the point), "
            "with their distribution-free interval and how many seeds reach it; seconds = NFE × the sampler's measured seconds per NFE. "
            "Definitions: docs/analysis.md.")
    return Table("cheapest", "Which sampler and how many steps, per topic and key point", df,
                 shown, note)


def _seed_range(row: pd.Series) -> str:
    """", interval 8–20 (96 %), 14/15 reach it": the uncertainty of a median over seeds
    (keypoints.aggregate; an open upper end lies above the sweep)."""
    if pd.isna(row.get("ci_lo", np.nan)) or pd.isna(row.get("n_seeds", np.nan)):
        return ""
    lo = _fmt_steps(row["ci_lo"])
    hi = f"> {_fmt_steps(row['sweep_max'])}" if pd.isna(row.get("ci_hi", np.nan)) \
        else _fmt_steps(row["ci_hi"])
    spread = f"interval {lo if lo == hi else f'{lo}–{hi}'} ({row['ci_level']:.0%})"
    return f", {spread}, {int(row['n_reached'])}/{int(row['n_seeds'])} reach it"


def batch_workflow(study: StudyData, n: int = 100, k: int = 3) -> Table:
    """The guide's batch workflow, from measured costs.

    A = N × cost(converged);  B = N × cost(indicative) + k × cost(converged).
    The k refined images are the same prompt and seed run again with the same sampler at
    its converged step count; speed-up = A / B, in seconds and in NFE."""
    w = _per_sampler_topic(study)
    need = ["indicative_nfe", "converged_nfe"]
    if w.empty or any(c not in w for c in need):
        df = pd.DataFrame()
    else:
        df = w.dropna(subset=need).copy()
        for unit in ("seconds", "nfe"):
            df[f"A_{unit}"] = n * df[f"converged_{unit}"]
            df[f"B_{unit}"] = n * df[f"indicative_{unit}"] + k * df[f"converged_{unit}"]
            df[f"speedup_{unit}"] = df[f"A_{unit}"] / df[f"B_{unit}"]
        df.insert(0, "k", k)
        df.insert(0, "N", n)
        order = {s: i for i, s in enumerate(study.samplers)}
        torder = {t: i for i, t in enumerate(_topics(study))}
        df = df.sort_values(["topic", "sampler"], key=lambda s: s.map(
            torder if s.name == "topic" else order)).reset_index(drop=True)
    if df.empty:
        shown = pd.DataFrame({"": ["no sampler reaches both the indicative and the converged point"]})
    else:
        shown = pd.DataFrame({
            "topic": df["topic"].replace({ALL: "all topics"}), "sampler": _row_label(study, df),
            "indicative → converged steps": [f"{_fmt_steps(a)} → {_fmt_steps(b)}" for a, b in
                                             zip(df["indicative_steps"], df["converged_steps"], strict=False)],
            "s/image at ind. | conv.": [f"{_fmt_num(a)} | {_fmt_num(b)}" for a, b in
                                        zip(df["indicative_seconds"], df["converged_seconds"], strict=False)],
            f"A: {n} at conv. (s)": df["A_seconds"].map(_fmt_num),
            f"B: {n} at ind. + {k} at conv. (s)": df["B_seconds"].map(_fmt_num),
            "speed-up (s)": df["speedup_seconds"].map(lambda v: _fmt_num(v, 2) + "×"),
            "A (NFE)": df["A_nfe"].map(lambda v: f"{v:,.0f}"),
            "B (NFE)": df["B_nfe"].map(lambda v: f"{v:,.0f}"),
            "speed-up (NFE)": df["speedup_nfe"].map(lambda v: _fmt_num(v, 2) + "×"),
        })
    note = (f"N = {n} candidates, k = {k} refined (ReportConfig.batch_candidates / batch_refined). "
            "A = N × t(converged); B = N × t(indicative) + k × t(converged); t = NFE per image "
            "at that sampler's key-point step count (median over seeds), in seconds × the "
            "sampler's measured seconds per NFE. Samplers that never reach the converged point "
            "(ancestral) are left out: there is no image to refine to.")
    return Table("batch_workflow", f"Batch workflow: {n} candidates at the indicative step, "
                 f"refine {k} to convergence, vs {n} at convergence", df, shown, note)


def batch_headline(table: Table) -> pd.DataFrame:
    """Per topic, the sampler whose workflow B costs the fewest NFE (the portable cost;
    on this machine's seconds a millisecond model's Python overhead would decide)."""
    df = table.data
    if df.empty:
        return df
    best = df.loc[df.groupby("topic", sort=False)["B_nfe"].idxmin()]
    return best[["topic", "sampler", "indicative_steps", "converged_steps", "A_nfe", "B_nfe",
                 "A_seconds", "B_seconds", "speedup_seconds", "speedup_nfe"]].reset_index(drop=True)


def _order_cell(row) -> str:
    """An order only where the analysis accepted it (local slopes agree); else say why not."""
    if bool(row.get("asymptotic")) and pd.notna(row.get("order")):
        if pd.isna(row.get("b_lo")):
            return _fmt_num(row["order"], 3)
        return f"{_fmt_num(row['order'], 3)} [{_fmt_num(-row['b_hi'], 3)}, {_fmt_num(-row['b_lo'], 3)}]"
    return "pre-asymptotic"


def rates_table(study: StudyData) -> Table | None:
    """Orders of convergence (d ∝ x^-order), each with its step range and the local slopes of
    successive doublings it was judged on; an order is shown only where they agree."""
    r = study.rates
    if r is None or r.empty:
        return None
    if "metric" in r:  # rates are fitted in their own metric (rmse), not the key points' scale
        r = r[r["metric"] == (study.metric if study.metric in set(r["metric"]) else r["metric"].iloc[0])]
    allt = r[r["topic"].astype(str) == "all"] if "topic" in r else r
    if allt.empty:
        allt = r
    order = {s: i for i, s in enumerate(study.samplers)}
    keys = [k for k in ("x", "reference", "sampler") if k in allt]
    allt = allt.sort_values(keys, key=lambda s: s.map(order) if s.name == "sampler" else s)
    def col(name: str, default=math.nan) -> pd.Series:  # older rates.csv lack the range columns
        return allt[name] if name in allt else pd.Series(default, index=allt.index)

    shown = pd.DataFrame({"sampler": allt["sampler"], "schedule": allt["schedule"], "x": allt["x"],
                          "reference": col("reference", ""),
                          "order [interval]": [_order_cell(row) for _, row in allt.iterrows()],
                          "range": [f"{_fmt_num(lo, 3)}–{_fmt_num(hi, 3)}" if pd.notna(lo) else "–"
                                    for lo, hi in zip(col("x_lo"), col("x_hi"), strict=True)],
                          "local slopes": col("slopes", "").fillna(""),
                          "each seed's order": col("seed_orders", "").fillna(""),
                          "seeds": allt["n_seeds"]})
    groups = []
    for (x, ref), g in shown.groupby(["x", "reference"], sort=False):
        accepted = int((g["order [interval]"] != "pre-asymptotic").sum())
        groups.append((f"against {x}, reference {ref}: {len(g)} samplers, {accepted} with an "
                       "asymptotic order", g.drop(columns=["x", "reference"]),
                       x == "nfe" and ref.startswith("exact")))
    if groups and not any(o for *_, o in groups):
        groups[0] = (*groups[0][:2], True)
    return Table("rates", "Orders of convergence, all topics", r, shown,
                 "An order is a measurement only in its asymptotic range: it is shown where the "
                 f"last {SLOPE_WINDOW} local slopes of successive doublings and the order fitted "
                 f"over them agree within {SLOPE_TOL}, less a margin for the spread over seeds "
                 "(docs/analysis.md), otherwise the row says pre-asymptotic and no claim is "
                 "decided from it. The interval is a 95% bootstrap over seeds with at least "
                 f"{MIN_BOOTSTRAP_SEEDS} seeds, else the range of the per-seed fits (rates.csv: "
                 "interval). Per-topic and per-seed fits are in rates.csv.", groups)


def _seeds_to_decide(n: float) -> str:
    if pd.isna(n):
        return ""
    return "no number (even split)" if math.isinf(n) else f"{int(n)}"


def claims_table(study: StudyData) -> Table | None:
    """The guide's claims, one group per claim (its words, source and measurement once),
    one row per sampler and CFG scale: the value, the verdict and a link to the cells."""
    c = study.claims
    if c is None or c.empty:
        return None
    c = c.copy()
    if {"n_for", "n_against", "p_value"} <= set(c.columns):   # the deciding test, in words
        c["seeds for/against/tied, p"] = [
            "" if pd.isna(f) else f"{int(f)}/{int(a)}/{int(t)}, p={p:.2g}"
            for f, a, t, p in zip(c["n_for"], c["n_against"], c["n_ties"], c["p_value"],
                                  strict=True)]
    if "seeds_needed" in c:   # a planning figure: seeds for 80 % power at the split seen
        c["seeds to decide"] = [_seeds_to_decide(n) for n in c["seeds_needed"]]
    c = c.fillna("")
    cols = [k for k in ("sampler", "schedule", "cfg", "value", "verdict",
                        "seeds for/against/tied, p", "seeds to decide", "details") if k in c]
    groups = []
    for (claim, source, measurement), g in c.groupby(
            [k if k in c else pd.Series("", index=c.index) for k in ("claim", "source", "measurement")],
            sort=False):
        shown = g[cols].copy()
        if "value" in shown:
            shown["value"] = shown["value"].map(lambda v: _fmt_num(v) if isinstance(v, float) else v)
        if "anchor" in g:
            shown["cells"] = [(str(a), str(cells)) for a, cells in zip(g["anchor"], g.get(
                "cells", g["anchor"]), strict=False)]
        who = "the guide" if source == "guide" else "the harness's own claim"
        groups.append((f"“{claim}” ({who})", shown, str(measurement)))
    shown_all = c[cols]
    return Table("claims", "The guide's claims, checked against this study", c, shown_all,
                 "One row per sampler, schedule and CFG scale; a verdict is a test over seeds "
                 "(paired by seed between samplers; 'inconclusive' where p >= 0.05), with the "
                 "seeds for and against the claim and the p-value of the comparison that "
                 "decided it, and the seeds a study would need for that comparison to be "
                 "decided with 80% power if its seeds split as these did (a planning "
                 "figure, loose with few seeds); 'cells' links to the table or figure that "
                 "holds the cells the "
                 "verdict was decided on (claims.csv has them in full).",
                 groups)