"""The guide's claims, each judged per sampler and per CFG scale on every swept step count.

Each row quotes the claim as the guide states it (``source`` = "guide"; a claim the harness
adds is ``source`` = "harness"), names the measurement that decided it, the cells it used
(a selector: samplers, step counts, topics, CFG scale) and an anchor into the report where
those cells are shown. Inputs are the analysis tables, so a verdict can be tested by
feeding tables that make it hold or fail; a claim whose samplers, topics or step counts are
not in the study is "not testable here" with the reason (a small study is a normal study).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from convergence.analysis.rates import SLOPE_TOL
from convergence.analysis.tables import columns
from convergence.core.registries import GUIDE_CLAIMS, register_claim

HOLDS, CONTRADICTED, UNTESTABLE = "holds", "contradicted", "not testable here"
PRE_ASYMPTOTIC = "pre-asymptotic: not decided"

#: the guide's words (InvokeAI "Sampler Convergence"), quoted
Q_CONVERGE = ("Results converge as steps (-s) are increased (except for K_DPM_2_A and "
              "K_EULER_A).")
Q_FEWER = "K_HEUN and K_DPM_2 converge in less steps (but are slower)."
Q_LOW = ("At very low steps (≤ -s8), K_HEUN and K_DPM_2 are not recommended. "
         "Use K_LMS instead.")
Q_TOWARDS = ("DDIM and PLMS eventually tend to converge to K-sampler results as steps are "
             "increased.")
Q_INDICATORS = ("K_HEUN and K_DPM_2 take the fewest number of steps to be good indicators of "
                "the final result.")
Q_LATER = ("It also takes longer to converge [...] producing human/animal faces/bodies is one "
           "of the things the model struggles the most with.")
#: the harness's own claim (not in the guide): what numerical analysis predicts
H_ORDER = ("First-order samplers (K_EULER, DDIM) converge with a lower order of accuracy than "
           "the higher-order ones (K_HEUN, K_DPM_2, PLMS).")

ANCESTRAL = ("euler_ancestral", "dpm_2_ancestral")
DETERMINISTIC = ("ddim", "plms", "euler", "lms", "heun", "dpm_2")
FIRST_ORDER = ("euler", "ddim")
HIGHER_ORDER = ("heun", "dpm_2", "plms")
PEOPLE = ("people", "animals")
SCENES = ("nature", "food")


def _row(claim: str, source: str, sampler: str, cfg: float, measurement: str, cells: str,
         anchor: str, value: str, verdict: str, details: str = "") -> dict:
    return dict(zip(columns("claims"), (claim, source, sampler, cfg, measurement, cells,
                                        anchor, value, verdict, details), strict=True))


def _has(df: pd.DataFrame | None, *cols: str) -> bool:
    return df is not None and not df.empty and all(c in df.columns for c in cols)


def _fmt(v: float) -> str:
    return "never" if math.isinf(v) else f"{v:g}"


def _sel(samplers, cfg: float, steps="all", topics="all") -> str:
    s = ",".join(samplers)
    st = steps if isinstance(steps, str) else ",".join(str(int(x)) for x in steps)
    tp = topics if isinstance(topics, str) else ",".join(topics)
    return f"sampler={s}; steps={st}; topics={tp}; seeds=all; cfg={cfg:g}"


def _point(kp: pd.DataFrame, sampler: str, point: str, topic: str = "all") -> float | None:
    """Median step of a key point (inf: not reached within the sweep); None if absent."""
    r = kp[(kp.sampler == sampler) & (kp.topic == topic) & (kp.point == point)]
    if r.empty:
        return None
    v = r.steps.iloc[0]
    return math.inf if pd.isna(v) else float(v)


def claims_converge(kp: pd.DataFrame, cfg: float) -> list[dict]:
    """Per sampler, from the per-topic status (majority of seeds, keypoints.aggregate_points):
    a deterministic sampler is contradicted by a topic where it does not converge and holds
    when it converges in every topic; an ancestral one holds when no topic converges and
    most topics do not converge (an "undetermined" topic is one where it moves no more than
    the ODE solvers at the top of the sweep), and is contradicted by a topic that converges."""
    rows = []
    meas = ("per topic, status over seeds: converged point reached or neighbours settled "
            "('converges'); not converged and still moving more than every deterministic "
            "sampler between the two largest step counts ('does not converge')")
    for s in [*DETERMINISTIC, *ANCESTRAL]:
        r = kp[(kp.sampler == s) & (kp.topic != "all") & (kp.point == "converged")]
        if r.empty:
            continue
        st = dict(zip(r.topic, r.status, strict=False))
        value = "; ".join(f"{t}: {v}" for t, v in st.items())
        n_never = sum(v == "does not converge" for v in st.values())
        n_conv = sum(v == "converges" for v in st.values())
        sel = _sel([s], cfg)
        if s in ANCESTRAL:
            verdict = (CONTRADICTED if n_conv else HOLDS if n_never * 2 > len(st)
                       else UNTESTABLE)
            details = ("expected: does not converge; holds when no topic converges and most "
                       "topics do not")
        else:
            verdict = (CONTRADICTED if n_never else HOLDS if n_conv == len(st) else UNTESTABLE)
            details = ("expected: converges in every topic; 'undetermined' topics did not "
                       "settle within the sweep (the guide: may require >= 700 steps)")
        rows.append(_row(Q_CONVERGE, "guide", s, cfg, meas, sel, "#table-keypoints_converged",
                         value, verdict, details))
    return rows


def claims_fewer_steps(kp: pd.DataFrame, cfg: float, point: str, quote: str) -> list[dict]:
    """Per sampler (heun, dpm_2): its median ``point`` step (all topics) against every other
    deterministic K-sampler's (euler, lms; plus ddim, plms for the indicative point)."""
    others = ("euler", "lms") if point == "converged" else ("euler", "lms", "ddim", "plms")
    rows = []
    for s in ("heun", "dpm_2"):
        mine = _point(kp, s, point)
        if mine is None:
            continue
        other = {o: v for o in others if (v := _point(kp, o, point)) is not None}
        meas = f"median {point} step over all topics and seeds (never = not within the sweep)"
        sel = _sel([s, *other], cfg)
        anchor = f"#table-keypoints_{point}"
        if not other:
            rows.append(_row(quote, "guide", s, cfg, meas, sel, anchor, "", UNTESTABLE,
                             f"needs one of {', '.join(others)}"))
            continue
        value = "; ".join(f"{k}={_fmt(v)}" for k, v in {s: mine, **other}.items())
        if math.isinf(mine) and all(math.isinf(v) for v in other.values()):
            rows.append(_row(quote, "guide", s, cfg, meas, sel, anchor, value, UNTESTABLE,
                             f"no sampler reached the {point} point within the sweep"))
            continue
        ok = (mine < min(other.values()) if point == "converged"
              else mine <= min(other.values()))
        rows.append(_row(quote, "guide", s, cfg, meas, sel, anchor, value,
                         HOLDS if ok else CONTRADICTED,
                         "fewer: strictly below every other" if point == "converged"
                         else "fewest: at or below every other"))
    return rows


def claims_low_steps(dist: pd.DataFrame, metric: str, few: int, cfg: float) -> list[dict]:
    """Per sampler (heun, dpm_2), at EVERY swept step count <= ``few``: its median distance
    to its own highest step count against lms's; holds when lms is closer at every one."""
    rows = []
    d = dist[(dist.metric == metric) & (dist.reference == "highest") & (dist.steps <= few)]
    med = d.groupby(["sampler", "steps"]).value.median()
    for s in ("heun", "dpm_2"):
        if s not in med.index.get_level_values(0):
            continue
        meas = (f"median {metric} to the sampler's own highest step count, at every swept "
                f"step count <= {few}, against lms")
        steps = sorted(set(med[s].index) & (set(med["lms"].index) if "lms" in med.index.get_level_values(0) else set()))
        sel = _sel([s, "lms"], cfg, steps or "none")
        if not steps:
            rows.append(_row(Q_LOW, "guide", s, cfg, meas, sel, "#curves", "", UNTESTABLE,
                             f"needs lms at a step count <= {few}"))
            continue
        worse = [n for n in steps if med[("lms", n)] < med[(s, n)]]
        value = "; ".join(f"{n} steps: {s}={med[(s, n)]:.3g}, lms={med[('lms', n)]:.3g}"
                          for n in steps)
        rows.append(_row(Q_LOW, "guide", s, cfg, meas, sel, "#curves", value,
                         HOLDS if len(worse) == len(steps) else CONTRADICTED,
                         "holds when lms is closer to its final image at every such step count"))
    return rows


def claims_towards_k(dist: pd.DataFrame, metric: str, indicative: float, cfg: float) -> list[dict]:
    """Per sampler (ddim, plms): median distance to a K-sampler's highest-step image at every
    swept step; holds when the largest step count is the closest and within ``indicative``."""
    rows = []
    d = dist[(dist.metric == metric) & dist.reference.str.contains("@", regex=False)]
    for s in ("ddim", "plms"):
        g = d[d.sampler == s]
        if g.empty:
            continue
        ref = sorted(g.reference.unique())[0]
        med = g[g.reference == ref].groupby("steps").value.median().sort_index()
        meas = f"median {metric} to {ref} at every swept step count"
        sel = _sel([s, ref.split("@")[0]], cfg, list(med.index))
        if len(med) < 2:
            rows.append(_row(Q_TOWARDS, "guide", s, cfg, meas, sel, "#curves", "", UNTESTABLE,
                             "needs at least 2 step counts"))
            continue
        value = "; ".join(f"{n}: {v:.3g}" for n, v in med.items())
        ok = med.iloc[-1] == med.min() and med.iloc[-1] <= indicative
        rows.append(_row(Q_TOWARDS, "guide", s, cfg, meas, sel, "#curves", value,
                         HOLDS if ok else CONTRADICTED,
                         f"holds when the largest step count is the closest and within the "
                         f"indicative threshold {indicative:g}"))
    return rows


def claims_people_later(seeds: pd.DataFrame, cfg: float) -> list[dict]:
    """Per deterministic sampler: median converged step over the seeds of people/animals
    against nature/food (a seed that never converges counts as +inf)."""
    rows = []
    conv = seeds[seeds.point == "converged"]
    for s in DETERMINISTIC:
        g = conv[conv.sampler == s]
        if g.empty:
            continue
        meas = "median converged step over seeds: people+animals vs nature+food (never = +inf)"
        a, b = g[g.topic.isin(PEOPLE)], g[g.topic.isin(SCENES)]
        sel = _sel([s], cfg, topics=[*PEOPLE, *SCENES])
        if a.empty or b.empty:
            rows.append(_row(Q_LATER, "guide", s, cfg, meas, sel, "#table-keypoints_converged",
                             "", UNTESTABLE, "needs people/animals and nature/food topics"))
            continue
        ma, mb = (float(np.median(x.steps.fillna(np.inf))) for x in (a, b))
        value = f"people/animals={_fmt(ma)}; nature/food={_fmt(mb)}"
        verdict = (UNTESTABLE if math.isinf(ma) and math.isinf(mb)
                   else HOLDS if ma > mb else CONTRADICTED)
        rows.append(_row(Q_LATER, "guide", s, cfg, meas, sel, "#table-keypoints_converged",
                         value, verdict, "never in both groups: not testable" if
                         verdict == UNTESTABLE else ""))
    return rows


def claims_order(limits: pd.DataFrame | None, cfg: float) -> list[dict]:
    """The harness's own claim, per first-order sampler, decided only from ASYMPTOTIC
    orders against the exact limit each sampler approaches (limits.csv)."""
    meas = ("order of accuracy vs NFE against the exact limit the sampler approaches, "
            "accepted only where the last local slopes agree (rates.asymptotic_fit)")
    if not _has(limits, "sampler", "closest", "order"):
        return [_row(H_ORDER, "harness", "", cfg, meas, "", "#rates", "", UNTESTABLE,
                     "needs exact references (analytic model) and orders against them")]
    lim = limits[limits.closest.astype(bool)]
    info = {r.sampler: r for r in lim.itertuples()}

    def show(s: str) -> str:
        r = info[s]
        if not r.asymptotic:
            return f"{s}: pre-asymptotic (local slopes {r.slopes})"
        return f"{s}={r.order:.2f} (NFE {r.x_lo:g}-{r.x_hi:g}, vs {r.limit})"

    higher = [s for s in HIGHER_ORDER if s in info]
    rows = []
    for s in FIRST_ORDER:
        if s not in limits.sampler.values:
            continue
        sel = _sel([s, *higher], cfg)
        if s not in info or not higher:
            rows.append(_row(H_ORDER, "harness", s, cfg, meas, sel, "#rates", "",
                             UNTESTABLE, "needs an approached exact limit for this sampler "
                             "and a higher-order one"))
            continue
        value = "; ".join(show(x) for x in [s, *higher])
        acc = [x for x in higher if info[x].asymptotic]
        if not info[s].asymptotic or not acc:
            rows.append(_row(H_ORDER, "harness", s, cfg, meas, sel, "#rates", value,
                             PRE_ASYMPTOTIC, "no claim is decided from a pre-asymptotic order"))
            continue
        # an accepted order is known to +-SLOPE_TOL (rates.py: measured): only a larger gap decides
        gaps = [info[x].order - info[s].order for x in acc]
        if all(g > SLOPE_TOL for g in gaps):
            verdict, why = HOLDS, "lower than every asymptotic higher-order sampler's"
        elif any(g < -SLOPE_TOL for g in gaps):
            verdict, why = CONTRADICTED, "higher than an asymptotic higher-order sampler's"
        else:
            verdict, why = UNTESTABLE, "orders within the measurement tolerance"
        rows.append(_row(H_ORDER, "harness", s, cfg, meas, sel, "#rates", value, verdict,
                         f"{why} (orders are known to ±{SLOPE_TOL}; a gap must exceed it)"))
    return rows


@dataclass(frozen=True)
class ClaimInputs:
    """The analysis tables a claim is judged on, for one CFG scale."""

    kp: pd.DataFrame
    seeds: pd.DataFrame
    dist: pd.DataFrame
    limits: pd.DataFrame | None
    metric: str
    indicative: float
    few_steps: int
    cfg: float


#: claims by name, judged in registration order: ``fn(ClaimInputs) -> [claim_row(...)]``
#: with the quoted claim and its claim_source ("guide", "harness", ...) as metadata (an
#: empty result is reported as "not testable here")
claim_row = _row
for _name, _fn, _quote, _source in (
        ("converge", lambda i: claims_converge(i.kp, i.cfg), Q_CONVERGE, "guide"),
        ("fewer_steps", lambda i: claims_fewer_steps(i.kp, i.cfg, "converged", Q_FEWER),
         Q_FEWER, "guide"),
        ("low_steps", lambda i: claims_low_steps(i.dist, i.metric, i.few_steps, i.cfg), Q_LOW,
         "guide"),
        ("towards_k", lambda i: claims_towards_k(i.dist, i.metric, i.indicative, i.cfg),
         Q_TOWARDS, "guide"),
        ("indicators", lambda i: claims_fewer_steps(i.kp, i.cfg, "indicative", Q_INDICATORS),
         Q_INDICATORS, "guide"),
        ("people_later", lambda i: claims_people_later(i.seeds, i.cfg), Q_LATER, "guide"),
        ("order", lambda i: claims_order(i.limits, i.cfg), H_ORDER, "harness")):
    register_claim(_name, _fn, quote=_quote, claim_source=_source)


def evaluate_claims(kp: pd.DataFrame, seeds: pd.DataFrame, dist: pd.DataFrame, *, metric: str,
                    indicative: float, few_steps: int,
                    limits: pd.DataFrame | None = None) -> pd.DataFrame:
    """All registered claims, in their order, separately for every CFG scale (never mixed)."""
    rows: list[dict] = []
    scales = sorted(set(kp.cfg)) if _has(kp, "cfg") else [math.nan]  # nan: an empty study
    empty = pd.DataFrame(columns=["cfg", "sampler", "topic", "point", "steps", "status",
                                  "metric", "reference", "value"])
    kp, seeds, dist = (x if _has(x, "cfg") else empty for x in (kp, seeds, dist))
    entries = list(GUIDE_CLAIMS.entries().values())
    for c in scales:
        inputs = ClaimInputs(
            kp[kp.cfg == c], seeds[seeds.cfg == c] if _has(seeds, "cfg") else seeds,
            dist[dist.cfg == c] if _has(dist, "cfg") else dist,
            limits[limits.cfg == c] if _has(limits, "cfg") else None, metric, indicative,
            few_steps, c)
        for e in entries:
            got = list(e.load()(inputs))
            rows += got or [_row(e.meta["quote"], e.meta["claim_source"], "", c, "", "", "", "",
                                 UNTESTABLE, "none of the samplers this claim is about is in "
                                 "the study")]
    order = {e.meta["quote"]: i for i, e in enumerate(entries)}
    rows.sort(key=lambda r: (r["cfg"], order.get(r["claim"], len(order))))
    return pd.DataFrame(rows, columns=columns("claims"))
