"""The guide's claims, each tested by one measurement on this study's data.

Inputs are the analysis tables (keypoints per topic incl. topic "all", rates, distances),
so the verdicts can be tested by feeding tables that make a claim hold or fail. A claim
whose samplers, topics, step counts or references are not in the study is "not testable
here" with the reason: every claim tolerates any subset of the tables (empty, missing
columns, one topic, three step counts), because a small study is a normal study.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

HOLDS, CONTRADICTED, UNTESTABLE = "holds", "contradicted", "not testable here"
FIRST_ORDER = ("euler", "ddim")
HIGHER_ORDER = ("heun", "dpm_2", "lms", "plms")
PEOPLE = ("people", "animals")
SCENES = ("nature", "food")


def _row(claim: str, measurement: str, value: str, verdict: str, details: str = "") -> dict:
    return {"claim": claim, "measurement": measurement, "value": value, "verdict": verdict,
            "details": details}


def _has(df: pd.DataFrame | None, *cols: str) -> bool:
    """Whether ``df`` is a non-empty table with these columns (pandas rows/columns may be
    absent entirely when a study is too small for a fit or a reference)."""
    return df is not None and not df.empty and all(c in df.columns for c in cols)


def _converged_steps(kp: pd.DataFrame, sampler: str, topic: str = "all") -> float | None:
    """Median converged step (inf if not reached in the sweep); None if sampler absent."""
    if not _has(kp, "sampler", "topic", "point", "steps"):
        return None
    r = kp[(kp.sampler == sampler) & (kp.topic == topic) & (kp.point == "converged")]
    if r.empty:
        return None
    v = r.steps.iloc[0]
    return math.inf if pd.isna(v) else float(v)


def claim_first_order(rates: pd.DataFrame, limits: pd.DataFrame | None = None) -> dict:
    """Judged by the fitted order against the exact limit each sampler approaches when the
    study has exact references (a fit against the own highest step count is badly
    conditioned: the reference's own error and the x_ref correction trade off); otherwise
    against the highest step count, said so in the measurement."""
    name = "first-order samplers converge slowly"
    if _has(limits, "sampler", "order_closest", "closest"):
        meas = ("fitted order -b of rmse vs NFE against the exact limit each sampler approaches "
                "(limits.csv), all topics")
        o = {s: float(v) for s, v in zip(limits.sampler, limits.order_closest, strict=False)
             if not pd.isna(v)}
    elif _has(rates, "topic", "x", "reference", "level", "sampler", "b"):
        meas = "fitted order -b of rmse vs NFE (reference: highest step count, all topics)"
        r = rates[(rates.topic == "all") & (rates.x == "nfe") & (rates.reference == "highest")
                  & (rates.level == "all")]
        o = {s: -float(b) for s, b in zip(r.sampler, r.b, strict=False) if not pd.isna(b)}
    else:
        return _row(name, "fitted order -b of rmse vs NFE", "", UNTESTABLE,
                    "no convergence rate could be fitted (needs >= 3 step counts >= "
                    "analysis.rate_min_steps)")
    first = {s: o[s] for s in FIRST_ORDER if s in o}
    higher = {s: o[s] for s in HIGHER_ORDER if s in o}
    if not first or not higher:
        return _row(name, meas, "; ".join(f"{s}={v:.2f}" for s, v in o.items()), UNTESTABLE,
                    "needs a fitted rate of a first-order (euler, ddim) and a higher-order "
                    "(heun, dpm_2, lms, plms) sampler")
    value = "; ".join(f"{s}={v:.2f}" for s, v in {**first, **higher}.items())
    ok = max(first.values()) < min(higher.values())
    return _row(name, meas, value, HOLDS if ok else CONTRADICTED,
                "holds when every first-order sampler's order is below every higher-order one's")


def claim_heun_dpm2_fewer_steps(kp: pd.DataFrame) -> dict:
    name = "K_HEUN and K_DPM_2 converge in fewer steps"
    meas = "median converged step (all topics) of heun and dpm_2 vs euler and lms"
    fast = {s: _converged_steps(kp, s) for s in ("heun", "dpm_2")}
    other = {s: _converged_steps(kp, s) for s in ("euler", "lms")}
    fast = {k: v for k, v in fast.items() if v is not None}
    other = {k: v for k, v in other.items() if v is not None}
    if len(fast) < 2 or not other:
        return _row(name, meas, "", UNTESTABLE, "needs heun, dpm_2 and euler or lms")
    value = "; ".join(f"{s}={v:g}" for s, v in {**fast, **other}.items())
    if all(math.isinf(v) for v in {**fast, **other}.values()):
        return _row(name, meas, value, UNTESTABLE, "none converged within the sweep")
    ok = max(fast.values()) < min(other.values())
    return _row(name, meas, value, HOLDS if ok else CONTRADICTED, "inf = not converged within the sweep")


def claim_poor_at_few_steps(dist: pd.DataFrame, metric: str, few: int) -> dict:
    name = f"K_HEUN and K_DPM_2 are poor at <= {few} steps, where K_LMS is better"
    meas = f"median {metric} to the own highest step count at the largest swept step <= {few}"
    if not _has(dist, "metric", "reference", "steps", "sampler", "value"):
        return _row(name, meas, "", UNTESTABLE, "no distances to the highest step count")
    d = dist[(dist.metric == metric) & (dist.reference == "highest") & (dist.steps <= few)]
    if d.empty:
        return _row(name, meas, "", UNTESTABLE, f"no step count <= {few} in the sweep")
    s = int(d.steps.max())
    med = d[d.steps == s].groupby("sampler").value.median()
    if not {"heun", "dpm_2", "lms"} <= set(med.index):
        return _row(name, meas, "", UNTESTABLE, f"needs heun, dpm_2 and lms at {s} steps")
    value = f"at {s} steps: " + "; ".join(f"{k}={med[k]:.4g}" for k in ("heun", "dpm_2", "lms"))
    ok = med["lms"] < med["heun"] and med["lms"] < med["dpm_2"]
    return _row(name, meas, value, HOLDS if ok else CONTRADICTED)


def claim_ancestral_never(kp: pd.DataFrame) -> dict:
    """Per topic the majority status over seeds (analysis.aggregate_points): holds when every
    topic of both samplers 'does not converge'; contradicted when one converges; otherwise
    (some topic undetermined: every sampler still moves as much at the top of the sweep)
    not testable, with the counts."""
    name = "K_EULER_A and K_DPM_2_A never converge"
    meas = ("per topic, majority of seeds: not converged and the change between the two largest "
            "step counts exceeds every deterministic sampler's on the same prompt/seed")
    if not _has(kp, "sampler", "topic", "point"):
        return _row(name, meas, "", UNTESTABLE, "no key points")
    parts, seen, states = [], False, []
    for s in ("euler_ancestral", "dpm_2_ancestral"):
        r = kp[(kp.sampler == s) & (kp.topic != "all") & (kp.point == "converged")]
        if r.empty:
            continue
        seen = True
        if "status" in r.columns:
            st = list(r.status)
        else:  # older tables: converges is the only evidence
            st = ["converges" if c else "does not converge" for c in r.converges.astype(bool)]
        states += st
        never = sum(x == "does not converge" for x in st)
        und = [t for t, x in zip(r.topic, st, strict=False) if x == "undetermined"]
        conv = [t for t, x in zip(r.topic, st, strict=False) if x == "converges"]
        parts.append(f"{s}: {never}/{len(st)} topics never converge"
                     + (f", undetermined: {','.join(und)}" if und else "")
                     + (f", converge: {','.join(conv)}" if conv else ""))
    if not seen:
        return _row(name, meas, "", UNTESTABLE, "no ancestral sampler in the study")
    value = "; ".join(parts)
    if any(x == "converges" for x in states):
        return _row(name, meas, value, CONTRADICTED, "an ancestral sampler settled in some topic")
    if all(x == "does not converge" for x in states):
        return _row(name, meas, value, HOLDS)
    return _row(name, meas, value, UNTESTABLE,
                "in the undetermined topics the deterministic samplers still move as much at the "
                "top of the sweep; more step counts are needed there")


def claim_ddim_plms_towards_k(dist: pd.DataFrame, metric: str, indicative: float) -> dict:
    name = "DDIM and PLMS tend towards the K-samplers' results"
    if not _has(dist, "metric", "reference", "sampler", "steps", "value"):
        return _row(name, f"{metric} to a deterministic K-sampler's highest step count", "",
                    UNTESTABLE, "no distances")
    d = dist[(dist.metric == metric) & dist.reference.str.contains("@")
             & dist.sampler.isin(["ddim", "plms"])]
    if d.empty:
        return _row(name, f"{metric} to a deterministic K-sampler's highest step count", "",
                    UNTESTABLE, "needs ddim or plms and a K-sampler reference")
    ref = d.reference.iloc[0]
    parts, ok = [], True
    for s, g in d[d.reference == ref].groupby("sampler"):
        med = g.groupby("steps").value.median().sort_index()
        if len(med) < 2:
            return _row(name, f"median {metric} to {ref}", "", UNTESTABLE,
                        f"{s} has fewer than 2 step counts with a distance to {ref}")
        first, last = float(med.iloc[0]), float(med.iloc[-1])
        parts.append(f"{s}: {first:.4g} at {med.index[0]} -> {last:.4g} at {med.index[-1]} steps")
        ok &= last < first and last <= indicative
    meas = f"median {metric} to {ref}: shrinks with steps and ends within the indicative threshold"
    return _row(name, meas, "; ".join(parts), HOLDS if ok else CONTRADICTED,
                f"indicative threshold {indicative}")


def claim_people_later(kp: pd.DataFrame) -> dict:
    name = "faces and bodies (people, animals) converge later than nature or food"
    meas = "median over deterministic samplers of the converged step (indicative if never converged)"
    if not _has(kp, "topic", "converges", "sampler", "point", "steps"):
        return _row(name, meas, "", UNTESTABLE, "no key points")
    k = kp[(kp.topic != "all") & kp.converges.astype(bool)
           & kp.sampler.map(lambda n: not _stochastic(n))]
    if k.empty or not set(PEOPLE) & set(k.topic) or not set(SCENES) & set(k.topic):
        return _row(name, meas, "", UNTESTABLE, "needs people/animals and nature/food topics")

    def level(topics) -> float:
        vals = []
        for (_t, _s), g in k[k.topic.isin(topics)].groupby(["topic", "sampler"]):
            c = g[g.point == "converged"].steps
            i = g[g.point == "indicative"].steps
            v = c.iloc[0] if len(c) and not pd.isna(c.iloc[0]) else (
                i.iloc[0] if len(i) and not pd.isna(i.iloc[0]) else np.inf)
            vals.append(float(v))
        return float(np.median(vals)) if vals else math.nan

    a, b = level(PEOPLE), level(SCENES)
    if math.isinf(a) and math.isinf(b):
        return _row(name, meas, f"people/animals={a:g}; nature/food={b:g}", UNTESTABLE,
                    "neither group reached the indicative point within the sweep")
    verdict = HOLDS if a > b else CONTRADICTED
    return _row(name, meas, f"people/animals={a:g}; nature/food={b:g}", verdict)


def evaluate_claims(kp: pd.DataFrame, rates: pd.DataFrame, dist: pd.DataFrame, *,
                    metric: str, indicative: float, few_steps: int,
                    limits: pd.DataFrame | None = None) -> pd.DataFrame:
    """All claims, in the guide's order."""
    return pd.DataFrame([
        claim_first_order(rates, limits),
        claim_heun_dpm2_fewer_steps(kp),
        claim_poor_at_few_steps(dist, metric, few_steps),
        claim_ancestral_never(kp),
        claim_ddim_plms_towards_k(dist, metric, indicative),
        claim_people_later(kp),
    ])


def _stochastic(name: str) -> bool:
    """True for ancestral/SDE samplers (unknown names count as deterministic)."""
    from convergence.errors import ConvergenceError
    from convergence.samplers.registry import resolve_sampler
    try:
        return resolve_sampler(name).spec.stochastic
    except ConvergenceError:
        return False
