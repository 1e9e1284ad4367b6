"""The guide's claims, each judged per sampler, schedule and CFG scale, seed by seed.

Each row quotes the claim as the guide states it (``source`` = "guide"; a claim the harness
adds is ``source`` = "harness"), names the measurement that decided it, the cells it used
(a selector: samplers, schedule, step counts, topics, CFG scale) and an anchor into the
report where those cells are shown. A verdict is a test over seeds, never a difference of
medians: comparisons between samplers are PAIRED by seed (same prompt, seed, schedule and
CFG) and decided by a two-sided exact sign test; "holds" or "contradicted" only where
p < ALPHA in that direction, else "inconclusive", with the counts and p in the row. A key
point never reached within the sweep is censored (it lies above every reached one), so a
pair with one censored seed is still ordered and two censored seeds tie. Inputs are the
analysis tables, so a verdict is tested by feeding tables that make it hold or fail; a claim
whose samplers, topics or step counts are not in the study is "not testable here" with the
reason, and one whose mechanism the model lacks (faces on the analytic model) is "not
testable on this model".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binom, binomtest, mannwhitneyu

from convergence.analysis.rates import SLOPE_TOL
from convergence.analysis.tables import columns
from convergence.core.registries import GUIDE_CLAIMS, register_claim

HOLDS, CONTRADICTED, UNTESTABLE = "holds", "contradicted", "not testable here"
INCONCLUSIVE = "inconclusive"
NOT_ON_MODEL = "not testable on this model"
PRE_ASYMPTOTIC = "pre-asymptotic: not decided"
#: significance of a verdict (two-sided): with n untied pairs all one way the sign test's
#: p is 2 * 0.5**n, so DECIDABLE_PAIRS (6: p = 0.031; 5 gives 0.0625) untied pairs are
#: the fewest that can decide a claim at all
ALPHA = 0.05
#: a seed "converges" for the convergence claim when its distance to its own final image
#: shrinks to at most this over the last doubling below the top (claims_converge). Judged
#: on the sampler's own curve, never against other samplers.
CONTRACTION = 0.5
#: ... unless the image a doubling below is farther from the final one than the picture's
#: own spread (rel_rmse > 1: saturated or blown up, not yet a picture of it; dpm_2_ancestral
#: at CFG 7.5 is about 2 up to 30 steps): then the seed decides nothing (a tie)
UNINFORMATIVE = 1.0


def sign_p(n_for: int, n_against: int) -> float:
    """Two-sided exact binomial (sign test) p-value of ``n_for`` against ``n_against``
    untied pairs under "either way equally likely" (1.0 with no untied pair)."""
    n = n_for + n_against
    return 1.0 if n == 0 else float(binomtest(n_for, n, 0.5).pvalue)


def decidable_pairs(alpha: float = ALPHA) -> int:
    """The fewest untied pairs whose all-one-way outcome reaches p < ``alpha``."""
    n = 1
    while sign_p(n, 0) >= alpha:
        n += 1
    return n


DECIDABLE_PAIRS = decidable_pairs()
#: the chance of a decision seeds_needed asks for (the usual 80 % power of a study design)
POWER = 0.8


def seeds_needed(n_for: int, n_against: int, n_ties: int, alpha: float = ALPHA,
                 power: float = POWER, most: int = 100_000) -> float:
    """Seeds a study would need for the sign test to decide (p < ``alpha``, in the majority's
    direction) with probability ``power`` if its seeds split as these did: the same share
    untied and, among the untied, the same share the majority's way. A planning figure from
    the split seen, not a bound: few seeds estimate the split loosely. NaN where no pair was
    untied (no split to plan from), inf for an even split or beyond ``most``."""
    untied = n_for + n_against
    if untied == 0:
        return math.nan
    share = max(n_for, n_against) / untied
    if share == 0.5:
        return math.inf
    lo = DECIDABLE_PAIRS
    while lo <= most:   # in growing windows: most answers are small, and isf is not cheap
        m = np.arange(lo, min(8 * lo, most) + 1)
        # smallest k whose two-sided p, 2 P(X >= k) under 1/2, is below alpha (never equal:
        # P is a multiple of 2^-m, alpha / 2 is not), and the chance of reaching it
        k = binom.isf(alpha / 2, m, 0.5) + 1
        enough = np.flatnonzero(binom.sf(k - 1, m, share) >= power)
        if len(enough):
            return float(math.ceil(m[enough[0]] * (untied + n_ties) / untied))
        lo = int(m[-1]) + 1
    return math.inf


@dataclass(frozen=True)
class Comparison:
    """One paired comparison: counts for and against the claim, ties, p and its verdict."""

    against: str
    n_for: int
    n_against: int
    n_ties: int
    #: the test's p-value; by default the sign test's of the counts
    p: float = math.nan

    def __post_init__(self) -> None:
        if math.isnan(self.p):
            object.__setattr__(self, "p", sign_p(self.n_for, self.n_against))

    def verdict(self, alpha: float = ALPHA) -> str:
        if self.p < alpha:
            return HOLDS if self.n_for > self.n_against else CONTRADICTED
        return INCONCLUSIVE

    def text(self) -> str:
        return (f"vs {self.against}: {self.n_for} for, {self.n_against} against, "
                f"{self.n_ties} tied, p={self.p:.3g}")


def combine(comps: list[Comparison]) -> tuple[str, Comparison]:
    """A claim over several comparisons ("fewer than each of ..."): holds when every one
    holds (each at ALPHA: all must); contradicted when one is contradicted at ALPHA / k
    (Bonferroni: any of k may); else inconclusive. Returns the verdict and the comparison
    that decided it (the contradicting one, else the weakest)."""
    k = len(comps)
    bad = [c for c in comps if c.verdict(ALPHA / k) == CONTRADICTED]
    if bad:
        return CONTRADICTED, min(bad, key=lambda c: c.p)
    weakest = max(comps, key=lambda c: (c.verdict() != HOLDS, c.p))
    return (HOLDS if all(c.verdict() == HOLDS for c in comps) else INCONCLUSIVE), weakest


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


#: a seed's curve, for pairing: the same prompt and seed under the same schedule and CFG
PAIR = ["prompt", "seed", "schedule", "cfg"]


def _row(claim: str, source: str, sampler: str, cfg: float, measurement: str, cells: str,
         anchor: str, value: str, verdict: str, details: str = "", *, schedule: str = "",
         comparison: Comparison | None = None) -> dict:
    c = comparison
    stats = ((c.against, c.n_for, c.n_against, c.n_ties, c.p,
              seeds_needed(c.n_for, c.n_against, c.n_ties)) if c is not None
             else ("", math.nan, math.nan, math.nan, math.nan, math.nan))
    return dict(zip(columns("claims"), (claim, source, sampler, schedule, cfg, measurement,
                                        cells, anchor, value, verdict, details, *stats),
                    strict=True))


def _judged(quote: str, sampler: str, schedule: str, cfg: float, meas: str, cells: str,
            anchor: str, comps: list[Comparison], rule: str, extra: str = "") -> dict:
    """The row of a claim decided by paired comparisons (:func:`combine`)."""
    verdict, deciding = combine(comps)
    value = "; ".join(c.text() for c in comps) + (f"; {extra}" if extra else "")
    return _row(quote, "guide", sampler, cfg, meas, cells, anchor, value, verdict,
                f"{rule}; two-sided sign test, p < {ALPHA:g} decides (needs at least "
                f"{DECIDABLE_PAIRS} untied pairs)", schedule=schedule, comparison=deciding)


def _has(df: pd.DataFrame | None, *cols: str) -> bool:
    return df is not None and not df.empty and all(c in df.columns for c in cols)


def _sel(samplers, cfg: float, steps="all", topics="all", schedule: str = "all") -> str:
    s = ",".join(samplers)
    st = steps if isinstance(steps, str) else ",".join(str(int(x)) for x in steps)
    tp = topics if isinstance(topics, str) else ",".join(topics)
    return f"sampler={s}; schedule={schedule}; steps={st}; topics={tp}; seeds=all; cfg={cfg:g}"


def _censored(steps: pd.Series) -> pd.Series:
    """Key point steps with "never within the sweep" as +inf: above every reached step, so
    comparisons with it are still ordered (two censored seeds tie)."""
    return steps.astype(float).fillna(math.inf)


def paired(mine: pd.Series, other: pd.Series, against: str,
           better: str = "lower") -> Comparison:
    """Sign counts of ``mine`` against ``other``, both indexed by the pairing key: a pair is
    "for" when ``mine`` is strictly better (lower, or higher with ``better="higher"``)."""
    both = pd.concat([mine.rename("a"), other.rename("b")], axis=1, join="inner")
    a, b = both.a.to_numpy(float), both.b.to_numpy(float)
    if better == "higher":
        a, b = b, a
    return Comparison(against, int((a < b).sum()), int((a > b).sum()), int((a == b).sum()))


def _seed_point(seeds: pd.DataFrame, sampler: str, point: str) -> pd.Series:
    g = seeds[(seeds.sampler == sampler) & (seeds.point == point)]
    return pd.Series(_censored(g.steps).to_numpy(), index=pd.MultiIndex.from_frame(g[PAIR]))


def _ladder_pair(steps: list[int]) -> tuple[int, int] | None:
    """(s0, s1): the largest scored step s1 (the sweep's second-largest: the largest is the
    reference, not scored) and the largest s0 <= s1/2 (a doubling below), or None."""
    st = sorted(set(steps))
    if len(st) < 2:
        return None
    s1 = st[-1]
    below = [s for s in st if 2 * s <= s1]
    return (below[-1], s1) if below else None


def claims_converge(dist: pd.DataFrame, metric: str, converged: float, cfg: float,
                    schedule: str, converged_metric: str | None = None) -> list[dict]:
    """Per sampler, seed by seed on its own curve: with d(s) the distance (``metric``) to its
    own highest step count, a seed converges when it is already converged there
    (``converged_metric``, default ``metric``, <= ``converged``) or d(s1) <= CONTRACTION * d(s0)
    (s1 the second-largest swept step, s0 a doubling below it, :func:`_ladder_pair`). An
    ODE solver of order p >= 0.5 shrinks so: on 25, 50, 100 the ratio is
    (50^-p - 100^-p) / (25^-p - 100^-p) <= 0.41; a sampler that draws new noise at every
    step count stays near 1. Deterministic samplers are expected to converge, ancestral ones
    not; a sign test over seeds decides, so a deterministic sampler whose distance does not
    shrink contradicts the claim, and no verdict depends on which other samplers are in the
    study. A seed whose lower image is blown up (d(s0) > UNINFORMATIVE) ties."""
    rows = []
    converged_metric = converged_metric or metric
    d = dist[(dist.metric == metric) & (dist.reference == "highest")] if _has(
        dist, "metric", "reference") else dist.iloc[:0]
    w = dist[(dist.metric == converged_metric) & (dist.reference == "highest")] if _has(
        dist, "metric", "reference") else dist.iloc[:0]
    within = w.set_index("hash").value if "hash" in w else pd.Series(dtype=float)
    for s in [*DETERMINISTIC, *ANCESTRAL]:
        g = d[d.sampler == s]
        pair = _ladder_pair(list(g.steps)) if not g.empty else None
        if g.empty:
            continue
        meas = (f"per seed: {converged_metric} to its own highest step count at the "
                f"second-largest step <= {converged:g}, or {metric} there <= {CONTRACTION:g} "
                "x that a doubling below "
                + (f"({pair[1]} vs {pair[0]} steps)" if pair else ""))
        sel = _sel([s], cfg, list(pair) if pair else "none", schedule=schedule)
        if pair is None:
            rows.append(_row(Q_CONVERGE, "guide", s, cfg, meas, sel, "#curves", "", UNTESTABLE,
                             "needs a step count a doubling below the second-largest one",
                             schedule=schedule))
            continue
        n_conv = n_not = n_tie = 0
        for _, c in g.groupby(PAIR):
            v = dict(zip(c.steps, c.value.astype(float), strict=False))
            d0, d1 = v.get(pair[0], math.nan), v.get(pair[1], math.nan)
            top = c[c.steps == pair[1]]
            w1 = float(within.get(top.hash.iloc[0], math.nan)) if len(top) and "hash" in c \
                else d1
            if math.isnan(d0) or math.isnan(d1) or d0 > UNINFORMATIVE:
                n_tie += 1
            elif w1 <= converged or d1 <= CONTRACTION * d0:
                n_conv += 1
            else:
                n_not += 1
        expect = s not in ANCESTRAL
        comp = Comparison("its own curve", *((n_conv, n_not) if expect else (n_not, n_conv)),
                          n_tie)
        rule = ("expected: converges" if expect else "expected: does not converge (the guide's "
                "exception)") + "; 'for' counts seeds that behave as expected"
        rows.append(_judged(Q_CONVERGE, s, schedule, cfg, meas, sel, "#curves", [comp], rule,
                            f"{n_conv} of {n_conv + n_not} seeds converge"))
    return rows


def claims_fewer_steps(seeds: pd.DataFrame, cfg: float, schedule: str, point: str,
                       quote: str) -> list[dict]:
    """Per sampler (heun, dpm_2): its ``point`` step against every other deterministic
    K-sampler's (euler, lms; plus ddim, plms for the indicative point) on the same seeds,
    paired; holds when it is earlier than each of them."""
    others = ("euler", "lms") if point == "converged" else ("euler", "lms", "ddim", "plms")
    rows = []
    meas = f"{point} step, seed by seed against each other sampler (never = above the sweep)"
    anchor = f"#table-keypoints_{point}"
    for s in ("heun", "dpm_2"):
        mine = _seed_point(seeds, s, point)
        if mine.empty:
            continue
        comps = [paired(mine, other, o) for o in others
                 if not (other := _seed_point(seeds, o, point)).empty]
        comps = [c for c in comps if c.n_for + c.n_against + c.n_ties]
        sel = _sel([s, *(c.against for c in comps)], cfg, schedule=schedule)
        if not comps:
            rows.append(_row(quote, "guide", s, cfg, meas, sel, anchor, "", UNTESTABLE,
                             f"needs one of {', '.join(others)} on the same seeds and schedule",
                             schedule=schedule))
            continue
        rows.append(_judged(quote, s, schedule, cfg, meas, sel, anchor, comps,
                            "holds when earlier than each other sampler"))
    return rows


def claims_low_steps(dist: pd.DataFrame, metric: str, few: int, cfg: float,
                     schedule: str) -> list[dict]:
    """Per sampler (heun, dpm_2), at EVERY swept step count <= ``few``: lms's distance to its
    own highest step count against the sampler's, paired by seed; holds when lms is closer
    at each such step count."""
    rows = []
    d = dist[(dist.metric == metric) & (dist.reference == "highest") & (dist.steps <= few)]
    for s in ("heun", "dpm_2"):
        g = d[d.sampler == s]
        if g.empty:
            continue
        meas = (f"{metric} to the sampler's own highest step count, seed by seed against "
                f"lms, at every swept step count <= {few}")
        lms = d[d.sampler == "lms"]
        steps = sorted(set(g.steps) & set(lms.steps))
        sel = _sel([s, "lms"], cfg, steps or "none", schedule=schedule)
        if not steps:
            rows.append(_row(Q_LOW, "guide", s, cfg, meas, sel, "#curves", "", UNTESTABLE,
                             f"needs lms at a step count <= {few}", schedule=schedule))
            continue

        def at(frame: pd.DataFrame, n: int) -> pd.Series:
            f = frame[frame.steps == n]
            return pd.Series(f.value.to_numpy(float), index=pd.MultiIndex.from_frame(f[PAIR]))

        comps = [paired(at(lms, n), at(g, n), f"lms at {n} steps") for n in steps]
        rows.append(_judged(Q_LOW, s, schedule, cfg, meas, sel, "#curves", comps,
                            "holds when lms is closer to its final image at each such step "
                            "count ('for': lms closer on that seed)"))
    return rows


def claims_towards_k(dist: pd.DataFrame, metric: str, converged: float, cfg: float,
                     schedule: str) -> list[dict]:
    """Per sampler (ddim, plms), seed by seed: its distance to a K-sampler's highest-step
    image is smallest at its largest step count AND within the CONVERGED threshold there
    ("converge to"); a sign test over seeds decides."""
    rows = []
    d = dist[(dist.metric == metric) & dist.reference.str.contains("@", regex=False)]
    for s in ("ddim", "plms"):
        g = d[d.sampler == s]
        if g.empty:
            continue
        ref = sorted(g.reference.unique())[0]
        g = g[g.reference == ref]
        meas = f"{metric} to {ref}, seed by seed, at its largest step count"
        sel = _sel([s, ref.split("@")[0]], cfg, sorted(set(g.steps)), schedule=schedule)
        if g.steps.nunique() < 2:
            rows.append(_row(Q_TOWARDS, "guide", s, cfg, meas, sel, "#curves", "", UNTESTABLE,
                             "needs at least 2 step counts", schedule=schedule))
            continue
        n_for = n_against = 0
        tops = []
        for _, c in g.groupby(PAIR):
            c = c.sort_values("steps")
            top = float(c.value.iloc[-1])
            tops.append(top)
            ok = top <= converged and top <= float(c.value.min())
            n_for, n_against = n_for + ok, n_against + (not ok)
        comp = Comparison(f"{ref}, converged <= {converged:g}", n_for, n_against, 0)
        rows.append(_judged(Q_TOWARDS, s, schedule, cfg, meas, sel, "#curves", [comp],
                            f"a seed is 'for' when its largest step count is its closest and "
                            f"within the converged threshold {converged:g}",
                            f"median at the top {np.median(tops):.3g}"))
    return rows


def claims_people_later(seeds: pd.DataFrame, cfg: float, schedule: str,
                        capabilities: Iterable[str]) -> list[dict]:
    """Per deterministic sampler: converged step of the people/animals seeds against the
    nature/food seeds (different prompts, so unpaired: every people seed against every
    scene seed, Mann-Whitney U's two-sided p). Only on a model that draws faces."""
    rows = []
    conv = seeds[seeds.point == "converged"]
    meas = ("converged step, every people/animals seed against every nature/food seed "
            "(never = above the sweep)")
    for s in DETERMINISTIC:
        g = conv[conv.sampler == s]
        if g.empty:
            continue
        sel = _sel([s], cfg, topics=[*PEOPLE, *SCENES], schedule=schedule)
        anchor = "#table-keypoints_converged"
        if "faces" not in set(capabilities):
            rows.append(_row(Q_LATER, "guide", s, cfg, meas, sel, anchor, "", NOT_ON_MODEL,
                             "the model declares no faces (its 'people'/'animals' topics are "
                             "groups of pictures, not a learned face or body)",
                             schedule=schedule))
            continue
        a = _censored(g[g.topic.isin(PEOPLE)].steps).to_numpy()
        b = _censored(g[g.topic.isin(SCENES)].steps).to_numpy()
        if not len(a) or not len(b):
            rows.append(_row(Q_LATER, "guide", s, cfg, meas, sel, anchor, "", UNTESTABLE,
                             "needs people/animals and nature/food topics", schedule=schedule))
            continue
        later = int((a[:, None] > b[None, :]).sum())
        earlier = int((a[:, None] < b[None, :]).sum())
        comp = Comparison("nature/food seeds (U pairs)", later, earlier,
                          a.size * b.size - later - earlier,
                          1.0 if later + earlier == 0 else float(mannwhitneyu(a, b).pvalue))
        verdict = comp.verdict()
        rows.append(_row(Q_LATER, "guide", s, cfg, meas, sel, anchor, comp.text(), verdict,
                         f"Mann-Whitney U, two-sided, p < {ALPHA:g} decides",
                         schedule=schedule, comparison=comp))
    return rows


def claims_order(limits: pd.DataFrame | None, cfg: float, schedule: str) -> list[dict]:
    """The harness's own claim, per first-order sampler, decided only from ASYMPTOTIC
    orders against the exact limit each sampler approaches (limits.csv)."""
    meas = ("order of accuracy vs NFE against the exact limit the sampler approaches, "
            "accepted only where the last local slopes agree (rates.asymptotic_fit)")
    if not _has(limits, "sampler", "closest", "order"):
        return [_row(H_ORDER, "harness", "", cfg, meas, "", "#rates", "", UNTESTABLE,
                     "needs exact references (analytic model) and orders against them",
                     schedule=schedule)]
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
        sel = _sel([s, *higher], cfg, schedule=schedule)
        if s not in info or not higher:
            rows.append(_row(H_ORDER, "harness", s, cfg, meas, sel, "#rates", "",
                             UNTESTABLE, "needs an unambiguous approached exact limit for this "
                             "sampler and a higher-order one", schedule=schedule))
            continue
        value = "; ".join(show(x) for x in [s, *higher])
        acc = [x for x in higher if info[x].asymptotic]
        if not info[s].asymptotic or not acc:
            rows.append(_row(H_ORDER, "harness", s, cfg, meas, sel, "#rates", value,
                             PRE_ASYMPTOTIC, "no claim is decided from a pre-asymptotic order",
                             schedule=schedule))
            continue
        # an accepted order is known to +-SLOPE_TOL (rates.py: measured): only a larger gap decides
        gaps = [info[x].order - info[s].order for x in acc]
        if all(g > SLOPE_TOL for g in gaps):
            verdict, why = HOLDS, "lower than every asymptotic higher-order sampler's"
        elif any(g < -SLOPE_TOL for g in gaps):
            verdict, why = CONTRADICTED, "higher than an asymptotic higher-order sampler's"
        else:
            verdict, why = INCONCLUSIVE, "orders within the measurement tolerance"
        rows.append(_row(H_ORDER, "harness", s, cfg, meas, sel, "#rates", value, verdict,
                         f"{why} (orders are known to ±{SLOPE_TOL}; a gap must exceed it)",
                         schedule=schedule))
    return rows


@dataclass(frozen=True)
class ClaimInputs:
    """The analysis tables a claim is judged on, for one CFG scale and one schedule."""

    kp: pd.DataFrame
    seeds: pd.DataFrame
    dist: pd.DataFrame
    limits: pd.DataFrame | None
    metric: str
    indicative: float
    few_steps: int
    cfg: float
    schedule: str = ""
    converged: float = 0.015
    #: the metric ``converged`` is a threshold of (the key points' converged metric)
    converged_metric: str | None = None
    #: what the model has (models register ``capabilities``: e.g. "faces"); the analytic
    #: model has none
    capabilities: frozenset[str] = frozenset()


#: claims by name, judged in registration order: ``fn(ClaimInputs) -> [claim_row(...)]``
#: with the quoted claim and its claim_source ("guide", "harness", ...) as metadata (an
#: empty result is reported as "not testable here")
claim_row = _row
for _name, _fn, _quote, _source in (
        ("converge", lambda i: claims_converge(i.dist, i.metric, i.converged, i.cfg,
                                               i.schedule, i.converged_metric), Q_CONVERGE,
         "guide"),
        ("fewer_steps", lambda i: claims_fewer_steps(i.seeds, i.cfg, i.schedule, "converged",
                                                     Q_FEWER), Q_FEWER, "guide"),
        ("low_steps", lambda i: claims_low_steps(i.dist, i.metric, i.few_steps, i.cfg,
                                                 i.schedule), Q_LOW, "guide"),
        ("towards_k", lambda i: claims_towards_k(i.dist, i.converged_metric or i.metric,
                                                 i.converged, i.cfg, i.schedule), Q_TOWARDS,
         "guide"),
        ("indicators", lambda i: claims_fewer_steps(i.seeds, i.cfg, i.schedule, "indicative",
                                                    Q_INDICATORS), Q_INDICATORS, "guide"),
        ("people_later", lambda i: claims_people_later(i.seeds, i.cfg, i.schedule,
                                                       i.capabilities), Q_LATER, "guide"),
        ("order", lambda i: claims_order(i.limits, i.cfg, i.schedule), H_ORDER, "harness")):
    register_claim(_name, _fn, quote=_quote, claim_source=_source)


def _only(df: pd.DataFrame | None, **eq) -> pd.DataFrame | None:
    """Rows of ``df`` with each given column equal to its value (columns it lacks: kept)."""
    if df is None or df.empty:
        return df
    keep = np.ones(len(df), dtype=bool)
    for col, v in eq.items():
        if col in df.columns:
            keep &= (df[col] == v).to_numpy()
    return df[keep]


def evaluate_claims(kp: pd.DataFrame, seeds: pd.DataFrame, dist: pd.DataFrame, *, metric: str,
                    indicative: float, few_steps: int, limits: pd.DataFrame | None = None,
                    converged: float = 0.015, converged_metric: str | None = None,
                    capabilities: Iterable[str] = ()) -> pd.DataFrame:
    """All registered claims, in their order, separately for every CFG scale and schedule
    (never mixed; a claim none of whose samplers is in a (scale, schedule) is reported once
    per scale as "not testable here")."""
    rows: list[dict] = []
    src = seeds if _has(seeds, "cfg", "schedule") else kp
    groups = (sorted(set(zip(src.cfg, src.schedule, strict=True)))
              if _has(src, "cfg", "schedule") else [(math.nan, "")])  # nan: an empty study
    empty = pd.DataFrame(columns=["cfg", "schedule", "sampler", "topic", "point", "steps",
                                  "status", "metric", "reference", "value", "prompt", "seed",
                                  "settled", "tail_ratio"])
    kp, seeds, dist = (x if _has(x, "cfg") else empty for x in (kp, seeds, dist))
    entries = list(GUIDE_CLAIMS.entries().values())
    caps = frozenset(capabilities)
    for c in sorted({g[0] for g in groups}, key=lambda v: (math.isnan(v), v)):
        got_any: dict[str, bool] = {}
        for cc, sch in groups:
            if not (cc == c or (math.isnan(c) and math.isnan(cc))):
                continue
            inputs = ClaimInputs(_only(kp, cfg=c, schedule=sch), _only(seeds, cfg=c, schedule=sch),
                                 _only(dist, cfg=c, schedule=sch),
                                 _only(limits, cfg=c, schedule=sch) if _has(limits, "cfg")
                                 else None, metric, indicative, few_steps, c, sch, converged,
                                 converged_metric, caps)
            for e in entries:
                got = list(e.load()(inputs))
                rows += got
                got_any[e.name] = got_any.get(e.name, False) or bool(got)
        for e in entries:
            if not got_any.get(e.name):
                rows.append(_row(e.meta["quote"], e.meta["claim_source"], "", c, "", "", "", "",
                                 UNTESTABLE, "none of the samplers this claim is about is in "
                                 "the study"))
    order = {e.meta["quote"]: i for i, e in enumerate(entries)}
    rows.sort(key=lambda r: (r["cfg"], order.get(r["claim"], len(order)), r["schedule"]))
    return pd.DataFrame(rows, columns=columns("claims"))
