"""`convergence check SAMPLER`: a small fixed study on the embedded analytic model that
checks a sampler against its own claims and against a stored baseline.

Checks, each a row of the printed table (what, expected, measured, passed):

- ``nfe``: model calls per image at every step count equal the claim
  ``nfe_per_step * steps + nfe_offset`` exactly;
- ``limit``: the deterministic sampler converges to the exact limit of the probability-flow
  ODE on the Karras schedule (D(x(sigma_min)) or x(0), whichever is nearer; x(sigma_min)
  for samplers that claim ``limit="sigma_min"``): the error still falls between the two
  largest step counts;
- ``order``: the empirical order against that limit equals the claimed one, judged only
  where the analysis' rule accepts it (``rates.order_accepted``: the local slopes of the
  last two doublings agree); otherwise reported as pre-asymptotic and not judged;
- ``determinism``: the same seed gives the same image, run again and inside another batch;
- against a baseline (``convergence baseline save``): NFE, key points (indicative and
  converged step of each seed, within one doubling) and images (within a distance).

Exit status of the command: 0 every check passed, 1 a check failed (a regression), 2 bad
input (unknown sampler, unreadable baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from convergence.errors import ConvergenceError
from convergence.samplers.registry import SamplerSpec, resolve_sampler

#: what a caller may claim for the check (overriding the registered metadata)
CLAIMS = ("order", "nfe_per_step", "nfe_offset", "stochastic", "limit")

#: the study: two prompts/seeds, CFG 1 (at CFG 7.5 the analytic model is stiff and heun,
#: dpm_2, dpmpp_2m, plms stay pre-asymptotic up to 128 steps, measured), 32x32, Karras
SIZE = 32
CFG = 1.0
SCHEDULE = "karras"
PROMPTS = (("a bowl of fruit", "food", 1), ("a portrait", "people", 2))
STEPS = (4, 8, 16, 32, 64, 128)
#: steps of the determinism re-runs
REPEAT_STEPS = 8
#: the exact limits' ODE tolerance; errors below FLOOR are at the solver's noise level
EXACT_RTOL = 1e-10
FLOOR = 1e-8
#: a claimed order holds when the order accepted by the analysis' one rule
#: (rates.order_accepted; its constants and the measurement behind them are there) is
#: within this of it
ORDER_TOLERANCE = 0.25
#: key points: the analysis' indicative / converged thresholds on its key-point metric
#: (AnalysisConfig defaults), against the exact limit (deterministic samplers) or the
#: largest step count; the allowed shift against the baseline, in doubling positions
KEYPOINTS = ("indicative", "converged")
KEYPOINT_TOLERANCE = 1
#: images: rmse of the 8x8-pooled final samples against the baseline, model space
#: ([-1, 1]); 1e-4 is 1/80 of an 8-bit level, far above float64 rounding across BLAS
#: builds (~1e-12) and far below any change to a sampler's arithmetic
IMAGE_TOLERANCE = 1e-4
POOL = 8
#: a cell alone vs the same cell in a batch: BLAS may sum in another order (float64)
BATCH_ATOL = 1e-9


@dataclass
class Row:
    check: str
    expected: str
    measured: str
    passed: bool | None   # None: not judged (no claim, pre-asymptotic, no baseline)
    message: str = ""


@dataclass
class Measurement:
    """What the study measured; a baseline stores it (baseline.py)."""

    sampler: str
    nfe: dict[int, int]
    limit: str | None = None
    errors: dict[int, float] = field(default_factory=dict)
    keypoints: dict[str, list[int | None]] = field(default_factory=dict)
    images: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class CheckReport:
    spec: SamplerSpec
    measurement: Measurement
    rows: list[Row]

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.rows)

    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.passed is False]

    def table(self) -> str:
        head = ("check", "expected", "measured", "passed")
        cells = [(r.check, r.expected, r.measured,
                  {True: "yes", False: "NO", None: "-"}[r.passed]) for r in self.rows]
        widths = [max(len(str(c[i])) for c in [head, *cells]) for i in range(4)]
        lines = ["  ".join(str(c[i]).ljust(widths[i]) for i in range(4)).rstrip()
                 for c in [head, *cells]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def summary(self) -> str:
        if self.passed:
            return f"{self.spec.name}: all checks passed"
        return f"{self.spec.name}: regression: " + "; ".join(
            f"{r.check}: {r.message}" for r in self.failures())


# -- the study -------------------------------------------------------------------------
def _cells(name: str, steps: int, which=PROMPTS):
    from convergence.plan import Cell
    return [Cell("analytic", "check", topic, prompt, seed, name, SCHEDULE, steps, CFG,
                 SIZE, SIZE) for prompt, topic, seed in which]


@dataclass
class _Run:
    samples: torch.Tensor
    nfe: int


def _run(model, name: str, steps: int, which=PROMPTS) -> _Run:
    """The study's cells at ``steps``, in one batch (one per batch for samplers that
    couple rows; their NFE is the largest of the cells')."""
    from convergence.runner import sample_batch
    cells = _cells(name, steps, which)
    if resolve_sampler(name).spec.rows_independent:
        r = sample_batch(model, cells)
        return _Run(r.samples, int(r.nfe))
    rs = [sample_batch(model, [c]) for c in cells]
    return _Run(torch.cat([r.samples for r in rs]), max(int(r.nfe) for r in rs))


def _exact_limits(model, family: str) -> dict[str, torch.Tensor]:
    """The exact limits of the study's starts (one ODE solve serves every step count: each
    Karras schedule starts at sigma_max and reaches sigma_min), named as in references.py:
    x(sigma_min) ("exact-end"), D(x(sigma_min)) ("exact-denoised"), x(0) ("exact-zero").
    The start is where a sampler of ``family`` starts (CompVis: noise * sqrt(1 + s0^2))."""
    from convergence.models.analytic import exact_solution
    from convergence.models.base import GuidedDenoiser
    from convergence.samplers.compvis import start_noise_scale
    from convergence.samplers.schedules import get_sigmas
    sig = get_sigmas(model, SCHEDULE, STEPS[-1])
    s0, smin = float(sig[0]), float(sig[sig > 0].min())
    x0 = (model.initial_noise([s for _, _, s in PROMPTS], SIZE, SIZE).double()
          * start_noise_scale(family, s0))
    cond = model.encode_prompts([p for p, _, _ in PROMPTS], [t for _, t, _ in PROMPTS])
    with torch.no_grad():
        end = exact_solution(model, x0, s0, smin, cond, CFG, rtol=EXACT_RTOL, atol=EXACT_RTOL)
        den = GuidedDenoiser(model)(end, torch.full((len(PROMPTS),), smin, dtype=torch.float64),
                                    conditioning=cond, cfg_scale=CFG)
        zero = exact_solution(model, end, smin, 0.0, cond, CFG, rtol=EXACT_RTOL, atol=EXACT_RTOL)
    return {"exact-end": end, "exact-denoised": den, "exact-zero": zero}


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def _pooled(x: torch.Tensor) -> list[list[float]]:
    p = torch.nn.functional.avg_pool2d(x.double(), POOL)
    return [[round(float(v), 7) for v in row.flatten()] for row in p]


def measure(spec: SamplerSpec) -> tuple[Measurement, list[Row]]:
    """Run the check study; the measurement and the claim-only rows."""
    from convergence.models.analytic import AnalyticModel
    from convergence.samplers.schedules import get_sigmas
    model = AnalyticModel(SIZE, SIZE)
    runs, skipped = {}, []
    for n in STEPS:
        try:
            runs[n] = _run(model, spec.name, n)
        except ConvergenceError as e:   # e.g. LCM: at most 50 steps
            if n <= REPEAT_STEPS:
                raise
            skipped.append((n, str(e)))
    m = Measurement(spec.name, {n: int(r.nfe) for n, r in runs.items()})
    top = max(runs)
    rows = [] if not skipped else [Row("steps", ", ".join(map(str, STEPS)),
                                       f"{', '.join(str(n) for n, _ in skipped)} not runnable: "
                                       f"{skipped[0][1]}", None)]
    rows.append(_nfe_row(spec, m.nfe))
    deterministic = not spec.stochastic and spec.family != "diffusers"
    if deterministic:
        limits = _exact_limits(model, spec.family)
        end = get_sigmas(model, SCHEDULE, top)[-1]
        names = (["exact-end"] if spec.limit == "sigma_min" or end > 0
                 else ["exact-denoised", "exact-zero"])
        errs = {k: {n: _rmse(r.samples, limits[k]) for n, r in runs.items()} for k in names}
        m.limit = min(names, key=lambda k: errs[k][top])
        m.errors = errs[m.limit]
        if spec.nfe_per_step is None:   # its tolerance, not the step count, sets the error
            rows.append(Row("limit", "not judged (adaptive)", f"{m.limit}: error "
                            f"{m.errors[top]:.1e} at {top} steps", None))
        else:
            rows += [_limit_row(spec, m), _order_row(spec, m)]
        reference = limits[m.limit]
    else:
        reference = runs[top].samples
        why = ("stochastic: converges in distribution" if spec.stochastic
               else "diffusers scheduler: chooses its own timesteps")
        rows.append(Row("order", _claimed_order(spec), f"not measured ({why})", None))
    for label in KEYPOINTS:
        m.keypoints[label] = _keypoints(runs, reference, label, model.display_range)
    for n in (min(runs), top):
        for (_, _, seed), img in zip(PROMPTS, _pooled(runs[n].samples), strict=True):
            m.images[f"{seed}:{n}"] = img
    rows.append(_determinism_row(model, spec, runs[REPEAT_STEPS].samples))
    return m, rows


def _keypoints(runs, reference: torch.Tensor, label: str,
               display: tuple[float, float]) -> list[int | None]:
    """Per seed: the smallest step count from which the distance stays within the
    analysis' threshold ``label``, measured as the analysis does: on the picture, i.e. the
    sample clipped to the model's ``display`` range (analysis/pictures.py)."""
    from convergence.analysis.keypoints import earliest_from_which
    from convergence.config import AnalysisConfig
    from convergence.metrics import compute
    a = AnalysisConfig()

    def picture(x: torch.Tensor) -> np.ndarray:
        return np.clip(x.double().numpy(), *display)

    ref = picture(reference)
    steps = sorted(runs)
    d = np.stack([compute(a.metric, picture(runs[n].samples), ref) for n in steps], 1)
    return [earliest_from_which(steps, [v <= getattr(a, label) for v in row]) for row in d]


# -- claim rows ------------------------------------------------------------------------
def _fmt_nfe(per_step: float, offset: float) -> str:
    per = f"{per_step:g}/step"
    return per if offset == 0 else f"{per} {'+' if offset > 0 else '-'} {abs(offset):g}"


def _nfe_row(spec: SamplerSpec, nfe: dict[int, int]) -> Row:
    steps = sorted(nfe)
    a, b = steps[-2], steps[-1]
    per = (nfe[b] - nfe[a]) / (b - a)
    measured = _fmt_nfe(per, nfe[b] - per * b) + f" ({', '.join(f'{n}:{nfe[n]}' for n in steps)})"
    if spec.nfe_per_step is None:
        return Row("nfe", "adaptive (no claim)", measured, None)
    expected = _fmt_nfe(spec.nfe_per_step, spec.nfe_offset)
    wrong = [n for n in steps if nfe[n] != spec.claimed_nfe(n)]
    if not wrong:
        return Row("nfe", expected, measured, True)
    n = wrong[0]
    return Row("nfe", expected, measured, False,
               f"NFE per step regressed: claimed {expected} ({spec.claimed_nfe(n)} calls at "
               f"{n} steps), measured {nfe[n]}")


def slopes(errors: dict[int, float]) -> list[float]:
    """Local slopes of successive doublings (the analysis' ``local_slopes`` against a limit:
    -dlog e / dlog n, here log2(e(n) / e(2n)))."""
    from convergence.analysis.rates import local_slopes
    n = sorted(errors)
    return [float(v) for v in local_slopes(n, [errors[k] for k in n])[1]]


def empirical_order(errors: dict[int, float]) -> tuple[float | None, str]:
    """(order, step range) where the analysis accepts an order (``rates.asymptotic_fit``,
    x = steps, against the exact limit); (None, why) otherwise."""
    from convergence.analysis.rates import asymptotic_fit
    n = sorted(errors)
    if errors[n[-1]] <= FLOOR:
        return None, f"error {errors[n[-1]]:.1e} at the solver's floor"
    fit = asymptotic_fit([(np.array(n, dtype=np.float64), np.array([errors[k] for k in n]))],
                         math.inf)
    if not fit["asymptotic"]:
        return None, f"pre-asymptotic (slopes {', '.join(fit['slopes'].split(',')[-3:])})"
    return fit["order"], f"steps {fit['x_lo']:g}-{fit['x_hi']:g}"


def _claimed_order(spec: SamplerSpec) -> str:
    return "no claim" if spec.order is None else f"{spec.order:g}"


def _limit_row(spec: SamplerSpec, m: Measurement) -> Row:
    n = sorted(m.errors)
    last = slopes(m.errors)[-1]
    measured = f"{m.limit}: error {m.errors[n[-1]]:.1e} at {n[-1]} steps, slope {last:.2f}"
    # "converges": the last local slope is at least the analysis' MIN_ORDER (slower is a
    # plateau; lms, whose last step mixes the two limits, converges at ~0.6 on this study;
    # a sampler that misses the limit plateaus at ~0)
    from convergence.analysis.rates import MIN_ORDER
    ok = m.errors[n[-1]] <= FLOOR or last >= MIN_ORDER
    expected = "x(sigma_min)" if spec.limit == "sigma_min" else "the exact limit at sigma = 0"
    return Row("limit", f"reaches {expected}", measured, ok,
               "" if ok else f"does not reach the limit: error {m.errors[n[-1]]:.1e} at "
               f"{n[-1]} steps, still {m.errors[n[-2]]:.1e} at {n[-2]} (slope {last:.2f}); "
               "is the last step right?")


def _order_row(spec: SamplerSpec, m: Measurement) -> Row:
    order, where = empirical_order(m.errors)
    measured = f"{order:.2f} ({where})" if order is not None else where
    if spec.order is None or order is None:
        return Row("order", _claimed_order(spec), measured, None)
    ok = abs(order - spec.order) <= ORDER_TOLERANCE
    return Row("order", f"{spec.order:g} +- {ORDER_TOLERANCE}", measured, ok,
               "" if ok else f"order regressed: claimed {spec.order:g}, measured {order:.2f} "
               f"({where}) against {m.limit}")


def _determinism_row(model, spec: SamplerSpec, first: torch.Tensor) -> Row:
    again = _run(model, spec.name, REPEAT_STEPS).samples
    alone = _run(model, spec.name, REPEAT_STEPS, PROMPTS[1:]).samples
    diff = float((again - first).abs().max())
    batch = float((alone[0] - first[1]).abs().max())
    ok = diff == 0 and batch <= BATCH_ATOL
    measured = f"max |diff| {diff:.1e} re-run, {batch:.1e} alone vs batched"
    msg = ""
    if diff != 0:
        msg = (f"not deterministic: the same seed gave a different image (max |diff| "
               f"{diff:.2g}); draw noise from the noise_sampler argument")
    elif batch > BATCH_ATOL:
        msg = f"an image depends on its batch-mates (max |diff| {batch:.2g})"
    return Row("determinism", "same seed, same image", measured, ok, msg)


# -- baseline rows ---------------------------------------------------------------------
def compare(m: Measurement, base: Measurement) -> list[Row]:
    """Rows comparing a measurement with its baseline."""
    rows = []
    same = base.nfe == m.nfe
    rows.append(Row("baseline nfe", ", ".join(f"{n}:{v}" for n, v in base.nfe.items()),
                    ", ".join(f"{n}:{v}" for n, v in m.nfe.items()), same,
                    "" if same else "NFE differs from the baseline"))
    for label in KEYPOINTS:
        want, got = base.keypoints.get(label, []), m.keypoints.get(label, [])
        ok = len(want) == len(got) and all(_near(a, b) for a, b in zip(want, got, strict=True))
        rows.append(Row(f"baseline {label} step", f"{_steps(want)} (+- one doubling)",
                        _steps(got), ok, "" if ok else
                        f"{label} step moved: baseline {_steps(want)}, measured {_steps(got)}"))
    worst, where = 0.0, ""
    for key, img in m.images.items():
        if key not in base.images:
            worst, where = math.inf, key
            break
        d = float(np.sqrt(np.mean((np.asarray(img) - np.asarray(base.images[key])) ** 2)))
        if d > worst:
            worst, where = d, key
    ok = worst <= IMAGE_TOLERANCE
    seed, _, steps = where.partition(":")
    rows.append(Row("baseline images", f"rmse <= {IMAGE_TOLERANCE:g}",
                    f"max rmse {worst:.1e}" + (f" (seed {seed}, {steps} steps)" if where else ""),
                    ok, "" if ok else f"images changed: rmse {worst:.2g} against the baseline "
                    f"at seed {seed}, {steps} steps"))
    return rows


def _near(a: int | None, b: int | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(STEPS.index(a) - STEPS.index(b)) <= KEYPOINT_TOLERANCE


def _steps(v: list[int | None]) -> str:
    return "/".join("never" if s is None else str(s) for s in v) or "-"


# -- entry -----------------------------------------------------------------------------
def resolve_for_check(sampler: Any, **claims: Any) -> SamplerSpec:
    """A registered name, a ``module:attr`` / dotted path or a ``{_target_: ...}`` node,
    with ``claims`` (order=..., nfe_per_step=...) overriding the registered ones."""
    from convergence.samplers.registry import SAMPLERS, sampler_from_target
    if isinstance(sampler, str) and sampler not in SAMPLERS and ("." in sampler or ":" in sampler):
        sampler = {"_target_": sampler, "name": sampler}
    name = sampler if isinstance(sampler, str) else sampler_from_target(sampler)
    spec = resolve_sampler(name).spec
    bad = set(claims) - set(CLAIMS)
    if bad:
        raise ConvergenceError(f"unknown sampler claim {sorted(bad)[0]!r}; use {', '.join(CLAIMS)}")
    # claims change what is judged, not how the sampler runs
    return replace(spec, **claims) if claims else spec


def check_sampler(sampler: Any, baseline: Measurement | None = None, **claims: Any) -> CheckReport:
    """Run the check study for ``sampler`` and judge it against its claims and ``baseline``."""
    spec = resolve_for_check(sampler, **claims)
    m, rows = measure(spec)
    if baseline is not None:
        rows += compare(m, baseline)
    else:
        rows.append(Row("baseline", "stored baseline", "none (convergence baseline save "
                        f"{spec.name})", None))
    return CheckReport(spec, m, rows)
