"""`convergence check SAMPLER`: a small fixed study on the embedded analytic model (or on
any model config: ``--model`` / Hydra overrides) that checks a sampler against its own claims
and against a stored baseline.

The study is ``conf/study/check.yaml`` with the checked sampler in it, run by the ordinary
runner into a store (a temporary folder) and measured by the analysis' own stages: its exact
limits and distances (``analysis.distances``), its per-seed key points
(``analysis.keypoints.seed_points``) and its order rule (``analysis.rates``). This module
holds no solver, metric or key-point code; it judges what those stages measured.

Checks, each a row of the printed table (what, expected, measured, passed):

- ``nfe``: model calls per image at every step count equal the claim
  ``nfe_per_step * steps + nfe_offset`` exactly;
- ``limit``: the deterministic sampler converges to the exact limit of the probability-flow
  ODE on the Karras schedule (D(x(sigma_min)) or x(0), chosen by the analysis' rule
  ``rates.choose_limit``; x(sigma_min) for samplers that claim ``limit="sigma_min"``):
  the error still falls at the top of the sweep and is well below the gap to the other
  limit; not judged where the limits are not separated ("ambiguous") or for samplers that
  claim ``limit="none"``. Exact limits come from the analytic model or from a user
  denoiser's own ``exact_solution`` (:func:`own_exact_solution`); on any other model the
  row says so, and the errors (order, key points) are measured against
  :data:`REFERENCE_SAMPLER` at :data:`REFERENCE_FACTOR` times the largest step count;
- ``order``: the empirical order against that limit equals the claimed one where the
  analysis' rule accepts it (``rates.order_accepted``: the local slopes of the last three
  doublings agree); where it does not, the row FAILS when the slopes move away from the
  claim (:func:`moving_away`) and is pre-asymptotic, not judged, while they settle
  towards it;
- ``determinism``: the same seed gives the same image, run again and inside another batch;
- against a baseline (``convergence baseline save``): NFE, key points (indicative and
  converged step of each seed, within one doubling) and images (within a distance).

Exit status of the command: 0 every check passed, 1 a check failed (a regression), 2 bad
input (unknown sampler, unreadable baseline).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from convergence.analysis import metrics as M
from convergence.analysis.distances import META, compute_distances
from convergence.analysis.inputs import load_cells
from convergence.analysis.keypoints import seed_points
from convergence.analysis.pictures import displayed
from convergence.analysis.rates import SLOPE_WINDOW, asymptotic_fit, choose_limit, local_slopes
from convergence.config.compose import CONF_DIR, compose_config
from convergence.config.schema import Config
from convergence.core.errors import ConvergenceError
from convergence.core.registries import MODELS, SAMPLERS
from convergence.models import build_model
from convergence.models.analytic import AnalyticModel
from convergence.models.base import Model
from convergence.models.device import torch_threads
from convergence.run.plan import Cell, expand
from convergence.run.runner import run_study, sample_batch
from convergence.samplers.spec import SamplerSpec, resolve_sampler, resolves

#: what a caller may claim for the check (overriding the registered metadata)
CLAIM_KEYS = ("order", "nfe_per_step", "nfe_offset", "stochastic", "limit")
#: steps of the determinism re-runs
REPEAT_STEPS = 8
#: errors below FLOOR are at the exact solver's noise level (its rtol is 1e-10)
FLOOR = 1e-8
#: a claimed order holds when the order accepted by the analysis' one rule
#: (rates.order_accepted; its constants and the measurement behind them are there) is
#: within this of it
ORDER_TOLERANCE = 0.25
#: key points: the analysis' per-seed indicative / converged points, against the exact
#: limit (deterministic samplers) or the largest step count; the allowed shift against the
#: baseline, in doubling positions
KEYPOINTS = ("indicative", "converged")
KEYPOINT_TOLERANCE = 1
#: images: rmse of the 8x8-pooled final samples against the baseline, model space
#: ([-1, 1]); 1e-4 is 1/80 of an 8-bit level, far above the stored float32 samples'
#: rounding (~2e-8 RMS) and far below any change to a sampler's arithmetic
IMAGE_TOLERANCE = 1e-4
POOL = 8
#: models without an exact solution: the reference is this trusted second-order sampler at
#: REFERENCE_FACTOR x the largest step count (its error there is 1/16 of its error at the
#: largest; for itself the order fit accounts for the finite reference, rates' x_ref)
REFERENCE_SAMPLER = "heun"
REFERENCE_FACTOR = 4
#: a cell alone vs the same cell in a batch (float32 as stored): the analytic model is
#: row-independent to the bit, so any difference is the sampler's
BATCH_ATOL = 1e-9


def check_study(overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The check study's config (``study=check``) as composed for every command, with
    Hydra ``overrides`` (another model: ``model._target_=...``, ``model.params.x=...``)."""
    return compose_config(["study=check", *overrides])


def model_overrides(model: str | None) -> list[str]:
    """``--model``: a ``model/NAME.yaml`` config (``model=NAME``), a registered model name
    (``model.name=NAME``), or a ``module:attr`` / dotted path (``model._target_=...``)."""
    if model is None:
        return []
    if ":" in model or "." in model:
        return [f"model._target_={model.replace(':', '.')}"]
    if (CONF_DIR / "model" / f"{model}.yaml").exists():
        return [f"model={model}"]
    if model not in MODELS:
        raise ConvergenceError(f"unknown --model {model!r}: give a registered model "
                               f"({', '.join(MODELS.names())}), a model/NAME.yaml config or "
                               "module:factory")
    return [f"model.name={model}"]


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
    #: steps of a finite reference (``REFERENCE_SAMPLER@N``); inf against an exact limit
    x_ref: float = math.inf


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
def _run(cfg: Config, model: Model) -> tuple[list[int], list[tuple[int, str]]]:
    """Run the study into its store; the step counts it holds, and those the sampler
    refused (e.g. LCM: at most 50 steps), each with its reason. A refusal at or below
    REPEAT_STEPS is an error: there is nothing to check then."""
    try:
        run_study(cfg, model)
        return list(cfg.steps), []
    except ConvergenceError:
        pass
    ran, skipped = [], []
    for n in cfg.steps:   # find which step counts it refuses: one run each
        try:
            run_study(replace(cfg, steps=[n]), model)
            ran.append(n)
        except ConvergenceError as e:
            if n <= REPEAT_STEPS:
                raise
            skipped.append((n, str(e)))
    return ran, skipped


def _pooled(x: np.ndarray) -> list[list[float]]:
    p = torch.nn.functional.avg_pool2d(torch.from_numpy(x).double(), POOL)
    return [[round(float(v), 7) for v in row.flatten()] for row in p]


@dataclass
class _Measured:
    """What the analysis' stages measured on the check study's store."""

    cells: pd.DataFrame
    dist: pd.DataFrame
    samples: np.ndarray


def _measured(cfg: Config, model: Model, reference: str | None = None) -> _Measured:
    """The checked sampler's cells and their distances; ``reference`` (``SAMPLER@N``, its
    cells in the same store) adds the distances to it, measured among all stored cells."""
    store, every = load_cells(cfg)
    own = every.sampler.isin(cfg.samplers) & every.steps.isin(cfg.steps)
    cells = every[own].reset_index(drop=True)
    samples = np.stack([store.load_sample(h) for h in cells.hash]).astype(np.float64)
    exact = model if isinstance(model, AnalyticModel) else None
    dist, _ = compute_distances(cfg.analysis, store, cells, samples, exact)
    if reference is not None:
        every = every.reset_index(drop=True)
        all_samples = np.stack([store.load_sample(h) for h in every.hash]).astype(np.float64)
        a = replace(cfg.analysis, references=[reference], metrics=["rmse"], image_references=[])
        to_ref, _ = compute_distances(a, store, every, all_samples, None)
        to_ref = to_ref[(to_ref.reference == reference) & to_ref.hash.isin(set(cells.hash))]
        dist = pd.concat([dist, to_ref], ignore_index=True)
    return _Measured(cells, dist, samples)


def own_exact_solution(model: Model):
    """The model's own closed-form ODE solution ``exact_solution(x, sigma_from, sigma_to)``
    (a user denoiser's attribute, models/denoiser.py), or None. Conditional models have
    none here: the solution would need the prompt's conditioning."""
    solve = getattr(getattr(model, "denoiser", None), "exact_solution", None)
    return solve if callable(solve) and not model.conditional else None


def _own_exact_distances(model: Model, got: _Measured) -> pd.DataFrame:
    """Each cell's rmse (unclipped) and rel_rmse (on the displayed picture, as the analysis'
    key points) to the exact limits the model's own solution gives: x(sigma_min)
    (exact-end), D(x(sigma_min)) (exact-denoised) and x(0) (exact-zero), from the cell's
    own initial noise."""
    solve = own_exact_solution(model)
    parts = []
    for i, r in enumerate(got.cells.itertuples()):
        x0 = model.initial_noise([int(r.seed)], int(r.width), int(r.height)).double() \
            * float(r.noise_scale)
        end = solve(x0, float(r.sigma_start), float(r.sigma_min)).double()
        sigma = torch.full((1,), float(r.sigma_min), dtype=model.sample_dtype)
        limits = {"exact-end": end, "exact-zero": solve(x0, float(r.sigma_start), 0.0),
                  "exact-denoised": model.denoise(end.to(model.sample_dtype), sigma, {})}
        row = got.cells.iloc[[i]]
        x = got.samples[i:i + 1]
        for name, ref in limits.items():
            ref = ref.double().cpu().numpy()
            for metric, a, b in (("rmse", x, ref), ("rel_rmse", displayed(x, row),
                                                    displayed(ref, row))):
                part = row[META].copy()
                part["reference"], part["ref_hash"] = name, ""
                part["metric"], part["value"] = metric, float(M.compute(metric, a, b)[0])
                parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _reference_run(cfg: Config, model: Model, spec: SamplerSpec) -> str | None:
    """The reference of a deterministic sampler on a model without an exact solution:
    REFERENCE_SAMPLER at REFERENCE_FACTOR x the largest step count, run into the check's
    store; its name (``heun@1024``), or None where no reference applies (stochastic,
    diffusers-scheduler or adaptive samplers, or a claimed limit other than sigma = 0)."""
    if isinstance(model, AnalyticModel) or own_exact_solution(model) is not None or \
            spec.stochastic or spec.family == "diffusers" or spec.limit != "zero":
        return None
    steps = REFERENCE_FACTOR * max(cfg.steps)
    run_study(replace(cfg, samplers=[REFERENCE_SAMPLER], steps=[steps]), model)
    return f"{REFERENCE_SAMPLER}@{steps}"


def _pooled_errors(dist: pd.DataFrame, limit: str) -> dict[int, float]:
    """The study's error against ``limit`` per step count: the rmse over all its cells
    (both prompts) together, from each cell's rmse."""
    d = dist[(dist.metric == "rmse") & (dist.reference == limit)]
    return {int(n): float(np.sqrt(np.mean(g.value.to_numpy() ** 2)))
            for n, g in d.groupby("steps")}


def _prompt_order(cfg: Config, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s rows in the order of the study's prompts (a baseline lists seeds so)."""
    order = {(p.text, int(p.seed)): i for i, p in enumerate(cfg.prompts)}
    return frame.assign(_o=[order[(r.prompt, int(r.seed))] for r in frame.itertuples()]) \
        .sort_values("_o").drop(columns="_o")


def measure(spec: SamplerSpec, cfg: Config) -> tuple[Measurement, list[Row]]:
    """Run the check study ``cfg`` for ``spec`` and measure it; the measurement and the
    claim-only rows."""
    model = build_model(cfg.model, cfg.width, cfg.height)
    steps, skipped = _run(cfg, model)
    cfg = replace(cfg, steps=steps)
    ref = _reference_run(cfg, model, spec)
    got = _measured(cfg, model, ref)
    m = Measurement(spec.name, {int(n): int(v) for n, v in got.cells.groupby("steps").nfe.max()
                                .items()})
    top = max(m.nfe)
    rows = [] if not skipped else [Row("steps", ", ".join(map(str, cfg.steps)),
                                       f"{', '.join(str(n) for n, _ in skipped)} not runnable: "
                                       f"{skipped[0][1]}", None)]
    rows.append(_nfe_row(spec, m.nfe))
    deterministic = not spec.stochastic and spec.family != "diffusers"
    reference = "highest"
    if deterministic and own_exact_solution(model) is not None:
        got.dist = pd.concat([got.dist, _own_exact_distances(model, got)], ignore_index=True)
    if deterministic and (isinstance(model, AnalyticModel) or own_exact_solution(model)):
        ends_above_zero = bool(got.cells.stops_above_zero.any())
        names = (["exact-end"] if spec.limit == "sigma_min" or ends_above_zero
                 else ["exact-denoised", "exact-zero"])
        errs = {k: _pooled_errors(got.dist, k) for k in names}
        chosen, choice = choose_limit({k: (np.array(sorted(e), float),
                                           np.array([e[n] for n in sorted(e)]))
                                       for k, e in errs.items()})
        # the analysis' rule chose it; without a choice the nearest is recorded (the
        # baseline's errors) and the limit row says why none was chosen
        m.limit = chosen or min(names, key=lambda k: errs[k][top])
        m.errors = errs[m.limit]
        reference = m.limit
        if spec.nfe_per_step is None or spec.limit == "none":
            # adaptive: its tolerance, not the step count, sets the error; "none": the
            # method as its app computes it approaches no limit (its claim)
            why = "adaptive" if spec.nfe_per_step is None else "claims no limit"
            rows.append(Row("limit", f"not judged ({why})", f"{m.limit}: error "
                            f"{m.errors[top]:.1e} at {top} steps", None))
        else:
            rows += [_limit_row(spec, m, choice), _order_row(spec, m, choice),
                     _seed_orders(got.dist, m)]
    elif ref is not None:
        # heun against its own 4x run: the analysis' finite-reference slopes (x_ref); any
        # other sampler against it as the limit (heun's own error there is 1/16 of its
        # error at the largest step count, below a converging sampler's)
        m.limit = ref
        m.x_ref = float(ref.partition("@")[2]) if spec.name == REFERENCE_SAMPLER else math.inf
        m.errors = _pooled_errors(got.dist, ref)
        reference = ref
        rows.append(Row("limit", f"not judged ({model.name} has no exact solution)",
                        f"reference {ref} (error {m.errors[top]:.1e} at {top} steps)", None))
        if spec.nfe_per_step is not None:
            rows += [_order_row(spec, m), _seed_orders(got.dist, m)]
    elif deterministic and spec.limit != "zero":
        rows.append(Row("order", _claimed_order(spec), f"not measured (claims limit "
                        f"{spec.limit!r}; {model.name} has no exact solution)", None))
    else:
        why = ("stochastic: converges in distribution" if spec.stochastic
               else "diffusers scheduler: chooses its own timesteps")
        rows.append(Row("order", _claimed_order(spec), f"not measured ({why})", None))
    a = replace(cfg.analysis, reference=reference)
    points = _prompt_order(cfg, seed_points(a, got.dist, got.cells))
    for label in KEYPOINTS:
        m.keypoints[label] = [None if pd.isna(s) else int(s)
                              for s in points[points.point == label].steps]
    cells = _prompt_order(cfg, got.cells)
    for n in (min(m.nfe), top):
        at = cells[cells.steps == n]
        for seed, img in zip(at.seed, _pooled(got.samples[at.index.to_numpy()]), strict=True):
            m.images[f"{int(seed)}:{n}"] = img
    rows.append(_determinism_row(cfg, model, spec, got))
    return m, rows


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
    n = sorted(errors)
    return [float(v) for v in local_slopes(n, [errors[k] for k in n])[1]]


def empirical_order(errors: dict[int, float], x_ref: float = math.inf) -> tuple[float | None, str]:
    """(order, step range) where the analysis accepts an order (``rates.asymptotic_fit``,
    x = steps, against the exact limit, or a reference at ``x_ref`` steps); (None, why)
    otherwise."""
    n = sorted(errors)
    if errors[n[-1]] <= FLOOR:
        return None, f"error {errors[n[-1]]:.1e} at the solver's floor"
    fit = asymptotic_fit([(np.array(n, dtype=np.float64), np.array([errors[k] for k in n]))],
                         x_ref)
    if not fit["asymptotic"]:
        return None, f"pre-asymptotic (slopes {', '.join(fit['slopes'].split(',')[-3:])})"
    return fit["order"], f"steps {fit['x_lo']:g}-{fit['x_hi']:g}"


def _claimed_order(spec: SamplerSpec) -> str:
    return "no claim" if spec.order is None else f"{spec.order:g}"


def _limit_row(spec: SamplerSpec, m: Measurement, choice: str = "closest") -> Row:
    """The limit the analysis' rule (rates.choose_limit) chose: passed when it chose one
    (approached, and well below the gap to the other limit) or the error is at the exact
    solver's floor; failed when the error approaches no limit; not judged when the limits
    are not separated at these step counts ("ambiguous")."""
    n = sorted(m.errors)
    last = slopes(m.errors)[-1]
    measured = (f"{m.limit}: error {m.errors[n[-1]]:.1e} at {n[-1]} steps, slope {last:.2f}"
                + ("" if choice == "closest" else f" ({choice})"))
    expected = "x(sigma_min)" if spec.limit == "sigma_min" else "the exact limit at sigma = 0"
    if m.errors[n[-1]] <= FLOOR or choice == "closest":
        return Row("limit", f"reaches {expected}", measured, True)
    if choice == "ambiguous":
        return Row("limit", f"reaches {expected}", measured, None)
    return Row("limit", f"reaches {expected}", measured, False,
               f"does not reach the limit: error {m.errors[n[-1]]:.1e} at {n[-1]} steps, "
               f"still {m.errors[n[-2]]:.1e} at {n[-2]} (slope {last:.2f}); is the last step "
               "right?")


def moving_away(local: list[float], claim: float, tol: float = ORDER_TOLERANCE) -> bool:
    """Whether the last local slopes show the claimed order is not being approached: the
    last is more than ``tol`` from ``claim`` and the distance to it did not shrink over
    every one of the last SLOPE_WINDOW - 1 intervals (slopes settling towards the claim
    are pre-asymptotic, not wrong)."""
    last = [abs(v - claim) if math.isfinite(v) else math.inf for v in local[-SLOPE_WINDOW:]]
    if not last or last[-1] <= tol:
        return False
    return not all(b < a for a, b in zip(last, last[1:], strict=False))


def _order_row(spec: SamplerSpec, m: Measurement, choice: str = "closest") -> Row:
    order, where = empirical_order(m.errors, m.x_ref)
    measured = f"{order:.2f} ({where})" if order is not None else where
    if spec.order is None or choice == "ambiguous":
        return Row("order", _claimed_order(spec), measured, None)
    if order is None:
        local = slopes(m.errors)
        if m.errors[max(m.errors)] > FLOOR and moving_away(local, spec.order):
            return Row("order", f"{spec.order:g} +- {ORDER_TOLERANCE}", measured, False,
                       f"order not shown: claimed {spec.order:g}, local slopes "
                       f"{', '.join(f'{v:.2f}' for v in local[-SLOPE_WINDOW:])} against "
                       f"{m.limit} move away from it")
        return Row("order", _claimed_order(spec), measured, None)
    ok = abs(order - spec.order) <= ORDER_TOLERANCE
    return Row("order", f"{spec.order:g} +- {ORDER_TOLERANCE}", measured, ok,
               "" if ok else f"order regressed: claimed {spec.order:g}, measured {order:.2f} "
               f"({where}) against {m.limit}")


def _seed_orders(dist: pd.DataFrame, m: Measurement) -> Row:
    """Each seed's own order against the same limit, by the same rule, beside the pooled
    curve's (reported, not judged: the order row judges the pooled curve)."""
    d = dist[(dist.metric == "rmse") & (dist.reference == m.limit)]
    parts = []
    for (_, seed), g in d.groupby(["prompt", "seed"], sort=False):   # one curve each
        order, where = empirical_order(dict(zip(g.steps.astype(int), g.value.astype(float),
                                                strict=True)), m.x_ref)
        parts.append(f"seed {int(seed)}: " + (f"{order:.2f}" if order is not None else
                                              where.partition(" (")[0]))
    return Row("seed orders", "reported", "; ".join(parts), None)


def _again(model: Model, spec: SamplerSpec, cells: list[Cell]) -> np.ndarray:
    """The cells run once more by the runner (one per batch for samplers that couple
    rows), as float32 like the store keeps them."""
    if spec.rows_independent:
        out = sample_batch(model, cells).samples
    else:
        out = torch.cat([sample_batch(model, [c]).samples for c in cells])
    return out.to(torch.float32).numpy()


def _determinism_row(cfg: Config, model: Model, spec: SamplerSpec, got: _Measured) -> Row:
    """The stored cells at REPEAT_STEPS run again in one batch, and the second prompt's
    cell alone: the same images, bit for bit and within BATCH_ATOL."""
    plan = [c for c in expand(replace(cfg, steps=[REPEAT_STEPS]), model.name,
                              model.fingerprint())]
    where = {h: i for i, h in enumerate(got.cells.hash)}
    stored = np.stack([got.samples[where[c.hash]] for c in plan]).astype(np.float32)
    diff = float(np.abs(_again(model, spec, plan) - stored).max())
    batch = float(np.abs(_again(model, spec, plan[1:])[0] - stored[1]).max())
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
    return abs(math.log2(a / b)) <= KEYPOINT_TOLERANCE  # the study's steps are doublings


def _steps(v: list[int | None]) -> str:
    return "/".join("never" if s is None else str(s) for s in v) or "-"


# -- entry -----------------------------------------------------------------------------
def resolve_for_check(sampler: Any, **claims: Any) -> SamplerSpec:
    """A registered name, a ``module:attr`` / dotted path or a ``{_target_: ...}`` node,
    with ``claims`` (order=..., nfe_per_step=...) overriding the registered ones."""
    if isinstance(sampler, str) and not resolves(sampler) and ("." in sampler or ":" in sampler):
        sampler = {"_target_": sampler, "name": sampler}
    name = sampler if isinstance(sampler, str) else SAMPLERS.from_target(sampler)
    spec = resolve_sampler(name).spec
    bad = set(claims) - set(CLAIM_KEYS)
    if bad:
        raise ConvergenceError(f"unknown sampler claim {sorted(bad)[0]!r}; use "
                               f"{', '.join(CLAIM_KEYS)}")
    # claims change what is judged, not how the sampler runs
    return replace(spec, **claims) if claims else spec


def check_sampler(sampler: Any, baseline: Measurement | None = None,
                  overrides: list[str] | tuple[str, ...] = (), **claims: Any) -> CheckReport:
    """Run the check study (with Hydra ``overrides``: another model) for ``sampler`` and
    judge it against its claims and ``baseline``. Torch's thread count is the study's while
    it runs, and restored after."""
    spec = resolve_for_check(sampler, **claims)
    with torch_threads(torch.get_num_threads()), \
            tempfile.TemporaryDirectory(prefix="convergence-check-") as tmp:
        cfg = replace(check_study(overrides), samplers=[spec.name], results_dir=tmp)
        m, rows = measure(spec, cfg)
    if baseline is not None:
        rows += compare(m, baseline)
    elif overrides:
        rows.append(Row("baseline", "stored baseline", "none (baselines are of the built-in "
                        "check study)", None))
    else:
        rows.append(Row("baseline", "stored baseline", "none (convergence baseline save "
                        f"{spec.name})", None))
    return CheckReport(spec, m, rows)
