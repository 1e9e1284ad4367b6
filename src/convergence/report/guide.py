"""The guide's headline tables, computed from the study, in the layout its readers know.

The InvokeAI guide gives three things a reader remembers: where each sampler becomes
indicative, coherent and converged per topic; an it/s table from an M1 Max; and a batch
workflow (100 candidates at ``-s10``, 3 refined at ``-s100``: 6000 s → 780 s). Each
table here puts the study's own measurement beside the guide's figure, so the two can be
read together. The guide's numbers are facts quoted from it (``GUIDE_*``), never results.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from convergence.report.data import POINTS, StudyData
from convergence.report.tables import (
    ALL,
    BASELINE,
    GUIDE_ITS,
    Table,
    _fmt_num,
    _fmt_steps,
    _kp,
    _not_converging,
    _ratio,
    _row_label,
    _slope,
    _topics,
    seconds_per_nfe,
)

#: the guide's sampler names (InvokeAI's K_ names), in its order
GUIDE_NAMES = {"ddim": "DDIM", "plms": "PLMS", "euler": "K_EULER", "lms": "K_LMS",
               "heun": "K_HEUN", "dpm_2": "K_DPM_2", "dpm_2_ancestral": "K_DPM_2_A",
               "euler_ancestral": "K_EULER_A"}
#: the guide's batch example: 100 images, 3 refined, -s10 candidates, -s100 refinement,
#: 60 s per image at -s100 (so 0.6 s per step)
GUIDE_BATCH = {"n": 100, "k": 3, "candidate_steps": 10, "refined_steps": 100,
               "seconds_per_step": 0.6}


def guide_name(sampler: str) -> str:
    return GUIDE_NAMES.get(sampler, "")


def is_real_model(study: StudyData) -> bool:
    """Whether the cells come from a real network rather than the embedded analytic
    model, whose seconds are mostly Python overhead and say nothing about a GPU."""
    models = set(study.cells.get("model", pd.Series(dtype=str)).astype(str))
    return bool(models) and models != {"analytic"}


def duration(seconds: float) -> str:
    """The guide's way of stating a time: '1 h 40 min', '13 min', '4.2 s', '12 ms'."""
    if seconds is None or not np.isfinite(seconds):
        return "—"
    if seconds >= 3600:
        h, m = divmod(round(seconds / 60), 60)
        return f"{h} h {m} min" if m else f"{h} h"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    if seconds >= 1:
        return f"{_fmt_num(seconds, 2)} s"
    return f"{_fmt_num(seconds * 1000, 2)} ms"


def keypoints_guide_layout(study: StudyData) -> Table:
    """One table, samplers × topics, each cell 'indicative · coherent · converged' steps."""
    kp = _kp(study).copy()
    kp["row"] = _row_label(study, kp)
    keys = study.cells.drop_duplicates(["sampler", "schedule", "cfg"])
    rows = list(dict.fromkeys(_row_label(study, keys)))
    samplers = dict(zip(_row_label(study, keys), keys["sampler"], strict=True))
    topics = _topics(study)
    cell = {}
    for r in kp.itertuples():
        text = _fmt_steps(r.steps)
        if text == "—" and r.point == "converged" and _not_converging(r):
            text = "never"
        cell[(r.row, r.topic, r.point)] = text
    shown = pd.DataFrame({
        "sampler": rows, "guide name": [guide_name(samplers[r]) for r in rows],
        **{("all topics" if t == ALL else t): [" · ".join(cell.get((r, t, p), "—") for p in POINTS)
                                               for r in rows] for t in topics}})
    note = ("Each cell: indicative · coherent · converged step count, median over seeds (the "
            "per-point tables below give the seeds that reached it). 'never': the sampler does "
            "not converge; '—': no median (fewer than half the seeds reached the point, or the "
            "sweep stops before it).")
    return Table("keypoints_guide", "Key points per sampler × topic (indicative · coherent · "
                 "converged steps)", kp.drop(columns=["row"]), shown, note)


def _device(study: StudyData) -> str:
    """The device the cells ran on, by name when the run recorded it (study.json)."""
    c = study.cells
    used = ", ".join(sorted(c["device"].astype(str).unique())) if "device" in c else "?"
    name = study.study.get("device_name")
    return f"{name} ({used})" if name else used


def speed_vs_guide(study: StudyData) -> Table:
    """NFE per step and it/s beside the guide's M1 Max it/s.

    NFE per step predicts the guide's ratios (K_HEUN's 0.95 it/s is K_EULER's 1.86 / 2);
    on the embedded model measured seconds are this machine's Python overhead, so NFE
    leads; on a real model seconds per image and it/s lead, with device and batch size."""
    c = study.cells
    real = is_real_model(study)
    top = int(c["steps"].max())
    rows = []
    for (sampler, schedule), g in c.groupby(["sampler", "schedule"], sort=False):
        sec = float(g["seconds"].sum())
        at_top = g[g["steps"] == top]
        rows.append({"sampler": sampler, "schedule": schedule, "guide_name": guide_name(sampler),
                     "nfe_per_step": _slope(g["steps"], g["nfe"]),
                     "it_per_s": float(g["steps"].sum()) / sec if sec > 0 else np.nan,
                     "seconds_per_image_at_top": float(at_top["seconds"].median())
                     if len(at_top) else np.nan,
                     "batch_size": float(g["batch_size"].median()) if "batch_size" in g else np.nan,
                     "guide_it_per_s": GUIDE_ITS.get(sampler, np.nan)})
    df = pd.DataFrame(rows)
    order = {s: i for i, s in enumerate(study.samplers)}
    df = df.sort_values("sampler", key=lambda s: s.map(order)).reset_index(drop=True)
    base = df[df["sampler"] == BASELINE]
    ref = {col: float(base[col].iloc[0]) if len(base) else np.nan
           for col in ("nfe_per_step", "it_per_s", "guide_it_per_s")}
    df["nfe_per_step_vs_euler"] = df["nfe_per_step"] / ref["nfe_per_step"]
    df["it_per_s_vs_euler"] = df["it_per_s"] / ref["it_per_s"]
    df["guide_it_per_s_vs_euler"] = df["guide_it_per_s"] / ref["guide_it_per_s"]
    # what NFE alone predicts for the guide's machine: K_EULER's it/s ÷ relative NFE per step
    df["guide_it_per_s_from_nfe"] = GUIDE_ITS[BASELINE] / df["nfe_per_step_vs_euler"]
    nfe_cols = {"NFE / step": df["nfe_per_step"].map(lambda v: _fmt_num(v, 2)),
                "NFE / step vs euler": df["nfe_per_step_vs_euler"].map(_ratio)}
    guide_cols = {"guide it/s (M1 Max)": df["guide_it_per_s"].map(_fmt_num),
                  "guide vs K_EULER": df["guide_it_per_s_vs_euler"].map(_ratio),
                  "guide it/s predicted by NFE": df["guide_it_per_s_from_nfe"].map(_fmt_num)}
    batch = ", ".join(f"{b:g}" for b in sorted(df["batch_size"].dropna().unique())) or "?"
    device = _device(study)
    size = f"{int(c['width'].iloc[0])}×{int(c['height'].iloc[0])}"
    if real:
        time_cols = {f"s / image at {top} steps": df["seconds_per_image_at_top"].map(_fmt_num),
                     "it/s": df["it_per_s"].map(_fmt_num),
                     "it/s vs euler": df["it_per_s_vs_euler"].map(_ratio)}
        shown = pd.DataFrame({"sampler": df["sampler"], "guide name": df["guide_name"],
                              **time_cols, **nfe_cols, **guide_cols})
        title = f"Speed on {device}, batch size {batch}, {size}: seconds per image and it/s"
        note = (f"Measured on {device} at batch size {batch}, {size}, one run (timings move "
                "with load). NFE per step is exact; 'guide it/s predicted by NFE' = the guide's "
                "K_EULER 1.86 it/s ÷ NFE per step relative to euler.")
    else:
        time_cols = {"it/s (this model, this machine)": df["it_per_s"].map(_fmt_num),
                     "vs euler": df["it_per_s_vs_euler"].map(_ratio)}
        shown = pd.DataFrame({"sampler": df["sampler"], "guide name": df["guide_name"],
                              **nfe_cols, **guide_cols, **time_cols})
        title = "Speed: NFE per step (the portable cost) beside the guide's M1 Max it/s"
        note = ("On the embedded analytic model NFE is the cost that carries over to a real "
                "model: the guide's it/s ratios are close to 1 ÷ NFE per step. The last two "
                f"columns are the cost of this {size} analytic model on this machine ({device}, "
                f"batch size {batch}): a model call takes about a millisecond, so Python "
                "overhead per step, not the sampler's maths, decides them. Do not read them "
                "as the samplers' speed on a GPU.")
    return Table("speed_guide", title, df, shown, note)


def _cost_at(study: StudyData, steps: int) -> dict[tuple[str, str, float], tuple[float, float]]:
    """(sampler, schedule, cfg) -> (median NFE, seconds) of one image at ``steps``;
    seconds = NFE × the sampler's measured seconds per NFE (as every batch estimate)."""
    c = study.cells[study.cells["steps"] == steps]
    spn = seconds_per_nfe(study)
    out = {}
    for (sampler, schedule, cfg), g in c.groupby(["sampler", "schedule", "cfg"], sort=False):
        nfe = float(g["nfe"].median())
        out[(sampler, schedule, cfg)] = (nfe, nfe * spn.get((sampler, schedule), np.nan))
    return out


def _recipe(n: int, k: int, cand: tuple[float, float], ref: tuple[float, float]) -> dict:
    """A and B of one recipe in NFE and seconds, from the cost of one candidate and one
    refined image."""
    out = {}
    for i, unit in enumerate(("nfe", "seconds")):
        a = n * ref[i]
        b = n * cand[i] + k * ref[i]
        out |= {f"A_{unit}": a, f"B_{unit}": b, f"speedup_{unit}": a / b if b else np.nan}
    return out


def batch_recipes(study: StudyData, batch: Table, n: int, k: int) -> Table:
    """The guide's recipe (N at -s10, k refined at -s100) on this study, next to the best
    recipe the key points suggest, and the guide's own example for scale."""
    real = is_real_model(study)
    g = GUIDE_BATCH
    rows = [{"recipe": "the guide's example (M1 Max)", "sampler": "", "N": g["n"], "k": g["k"],
             "candidate_steps": g["candidate_steps"], "refined_steps": g["refined_steps"],
             **_recipe(g["n"], g["k"], (np.nan, g["seconds_per_step"] * g["candidate_steps"]),
                       (np.nan, g["seconds_per_step"] * g["refined_steps"])),
             "candidates_indicative": np.nan, "refined_converged": np.nan}]
    cand, ref = _cost_at(study, g["candidate_steps"]), _cost_at(study, g["refined_steps"])
    kp = _kp(study)
    kp = kp[kp["topic"] == ALL] if (kp["topic"] == ALL).any() else kp
    point = {(r.sampler, r.schedule, r.cfg, r.point): r.steps for r in kp.itertuples()}
    for key in cand.keys() & ref.keys():
        sampler, schedule, cfg = key
        ind, conv = (point.get((*key, p), np.nan) for p in ("indicative", "converged"))
        rows.append({"recipe": "the guide's recipe, here", "sampler": sampler,
                     "schedule": schedule, "cfg": cfg, "N": n, "k": k,
                     "candidate_steps": g["candidate_steps"], "refined_steps": g["refined_steps"],
                     **_recipe(n, k, cand[key], ref[key]),
                     "candidates_indicative": bool(ind <= g["candidate_steps"]) if pd.notna(ind) else False,
                     "refined_converged": bool(conv <= g["refined_steps"]) if pd.notna(conv) else False})
    best = batch.data
    if not best.empty:
        best = best[best["topic"] == (ALL if (best["topic"] == ALL).any() else best["topic"].iloc[0])]
        b = best.loc[best["B_nfe"].astype(float).idxmin()]
        rows.append({"recipe": "best measured recipe", "sampler": b["sampler"],
                     "schedule": b["schedule"], "cfg": b["cfg"], "N": n, "k": k,
                     "candidate_steps": b["indicative_steps"], "refined_steps": b["converged_steps"],
                     **_recipe(n, k, (b["indicative_nfe"], b["indicative_seconds"]),
                               (b["converged_nfe"], b["converged_seconds"])),
                     "candidates_indicative": True, "refined_converged": True})
    df = pd.DataFrame(rows)
    order = {s: i for i, s in enumerate(study.samplers)}
    df["_o"] = [(0 if r == "the guide's example (M1 Max)" else 2 if r == "best measured recipe"
                 else 1, order.get(s, -1)) for r, s in zip(df["recipe"], df["sampler"], strict=True)]
    df = df.sort_values("_o").drop(columns="_o").reset_index(drop=True)
    lead = "seconds" if real else "nfe"

    def stated(r) -> str:
        """As the guide says it: 'A 1 h 40 min vs B 13 min: 7.7× as quick'."""
        if r["recipe"].startswith("the guide's example") or real:
            a, b = duration(r["A_seconds"]), duration(r["B_seconds"])
            return f"A {a} vs B {b}: {_fmt_num(r['speedup_seconds'], 2)}× as quick"
        return (f"A {r['A_nfe']:,.0f} NFE vs B {r['B_nfe']:,.0f} NFE: "
                f"{_fmt_num(r['speedup_nfe'], 2)}× as quick")

    def yes(v) -> str:
        return "" if pd.isna(v) else ("yes" if v else "no")

    sec = "s" if real else "s (this model, this machine)"
    shown = pd.DataFrame({
        "recipe": df["recipe"], "sampler": df["sampler"].map(lambda s: s or "—"),
        "candidates": [f"{n_:g} at {_fmt_steps(s)} steps" for n_, s in zip(df["N"], df["candidate_steps"], strict=True)],
        "refined": [f"{k_:g} at {_fmt_steps(s)} steps" for k_, s in zip(df["k"], df["refined_steps"], strict=True)],
        "A (NFE)": df["A_nfe"].map(lambda v: "—" if pd.isna(v) else f"{v:,.0f}"),
        "B (NFE)": df["B_nfe"].map(lambda v: "—" if pd.isna(v) else f"{v:,.0f}"),
        f"A {sec}": df["A_seconds"].map(_fmt_num), f"B {sec}": df["B_seconds"].map(_fmt_num),
        "speed-up": [_fmt_num(r[f"speedup_{lead}"] if pd.notna(r[f"speedup_{lead}"])
                              else r["speedup_seconds"], 2) + "×" for _, r in df.iterrows()],
        "stated as the guide does": [stated(r) for _, r in df.iterrows()],
        "candidates indicative?": df["candidates_indicative"].map(yes),
        "refined converged?": df["refined_converged"].map(yes)})
    swept = sorted(int(s) for s in study.cells["steps"].unique())
    missing = [s for s in (g["candidate_steps"], g["refined_steps"]) if s not in swept]
    note = (f"A = N images at the refine step count; B = N candidates + k of them refined "
            f"(same prompt and seed). Cost per image: NFE, and NFE × the sampler's measured "
            f"seconds per NFE. 'Candidates indicative?' / 'refined converged?': whether "
            f"{g['candidate_steps']} steps reach the sampler's indicative point and "
            f"{g['refined_steps']} its converged point (all-topics median), i.e. whether the "
            "guide's recipe delivers what it promises on this study. The best measured recipe "
            "takes the sampler and key points with the fewest NFE for B."
            + (f" This study does not sweep {' and '.join(map(str, missing))} steps, so the "
               "guide's recipe cannot be costed here." if missing else ""))
    return Table("batch_recipes", "Batch workflow: the guide's recipe and the best measured one",
                 df, shown, note)
