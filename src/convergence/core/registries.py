"""Every registry of the harness, created here, each with its ``register_*`` function.

All six have the same shape, ``register_KIND(name, target=None, *, aliases=(), **meta)``:
a decorator right above the function (the one way built-ins and plug-ins register), or a
direct call with an object or a lazy ``"module:attr"``. Their built-in modules are named
here as strings and imported on first lookup, so creating a registry imports no stage.
Third parties also reach them through entry points, ``plugins=[...]`` and Hydra
``_target_`` nodes (:mod:`convergence.core.registry`, docs/plugins.md).
"""

from __future__ import annotations

from typing import Any

from convergence.core.registry import Registry

#: a sampler's claims and facts (samplers/spec.py, SamplerSpec): what a decorator, a
#: ``_target_`` node or `convergence check` may set
SAMPLER_META = ("family", "stochastic", "order", "nfe_per_step", "nfe_offset", "noise",
                "native_schedule", "description", "rows_independent", "limit", "scheduled",
                "diffusers")
#: a metric's facts (analysis/metrics.py, MetricSpec)
METRIC_META = ("space", "lower_is_better", "description")
#: the analysis' exact-limit references (analytic model): the ODE's end at sigma_min, its
#: denoised value there, and its continuation to sigma = 0 (analysis/references.py)
EXACT_LIMITS = ("exact-denoised", "exact-zero", "exact-end")

#: a k-diffusion-signature function + its claims -> SamplerSpec
SAMPLERS: Registry = Registry(
    "sampler", group="convergence.samplers",
    builtins=("convergence.samplers.compvis", "convergence.samplers.kdiffusion",
              "convergence.samplers.comfy", "convergence.samplers.diffusers_schedulers"),
    wrap="convergence.samplers.spec:make_spec", meta_keys=SAMPLER_META)
#: ``fn(model, steps) -> steps + 1 sigmas``
SCHEDULES: Registry = Registry("schedule", group="convergence.schedules",
                               builtins=("convergence.samplers.schedules",))
#: a batched ``fn(x, ref) -> one value per row`` + its space -> MetricSpec
METRICS: Registry = Registry("metric", group="convergence.metrics",
                             builtins=("convergence.analysis.metrics",),
                             wrap="convergence.analysis.metrics:metric_spec",
                             meta_keys=METRIC_META)
#: ``factory(model_cfg, width, height) -> Model``
MODELS: Registry = Registry("model", group="convergence.models", builtins=("convergence.models",))
#: ``fn(cells) -> [(row, reference row)]`` over the store's cell table
REFERENCES: Registry = Registry("reference", group="convergence.references",
                                builtins=("convergence.analysis.references",))
#: the guide's claims (and the harness's own): ``fn(ClaimInputs) -> rows``, with ``quote``
#: and ``claim_source``
GUIDE_CLAIMS: Registry = Registry("claim", group="convergence.claims",
                                  builtins=("convergence.analysis.claims",))


def register_sampler(name: str, target: Any = None, *, aliases: tuple[str, ...] = (),
                     **claims: Any) -> Any:
    """A sampler ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None,
    noise_sampler=None, **options)`` with its claims: order, nfe_per_step, nfe_offset,
    stochastic, noise ("gaussian"/"brownian"), native_schedule, limit, family,
    rows_independent, ``scheduled`` ({name that also fixes the schedule: schedule}, A1111's
    "DPM++ 2M Karras") and ``diffusers`` (the diffusers-scheduler sampler of the same
    method, for ``model.sampler_backend=diffusers``)."""
    return SAMPLERS.register(name, target, aliases=aliases, **claims)


def register_schedule(name: str, target: Any = None, *, aliases: tuple[str, ...] = (),
                      **meta: Any) -> Any:
    """A schedule ``fn(model, steps) -> steps + 1 sigmas`` (the last one 0 or sigma_min)."""
    return SCHEDULES.register(name, target, aliases=aliases, **meta)


def register_metric(name: str, target: Any = None, *, aliases: tuple[str, ...] = (),
                    **meta: Any) -> Any:
    """A batched metric ``fn(x, ref) -> (B,)``; ``space`` "sample" (model-space floats) or
    "image" (RGB in [0, 1]), ``lower_is_better``, ``description``."""
    return METRICS.register(name, target, aliases=aliases, **meta)


def register_model(name: str, target: Any = None, *, aliases: tuple[str, ...] = (),
                   **meta: Any) -> Any:
    """A model factory ``factory(model_cfg, width, height) -> Model``."""
    return MODELS.register(name, target, aliases=aliases, **meta)


def register_reference(name: str, target: Any = None, *, aliases: tuple[str, ...] = (),
                       **meta: Any) -> Any:
    """A cell reference ``fn(cells) -> [(row, reference row)]`` (``analysis.references``)."""
    return REFERENCES.register(name, target, aliases=aliases, **meta)


def register_claim(name: str, target: Any = None, *, aliases: tuple[str, ...] = (),
                   **meta: Any) -> Any:
    """A claim ``fn(ClaimInputs) -> [claim rows]`` with its ``quote`` and ``claim_source``."""
    return GUIDE_CLAIMS.register(name, target, aliases=aliases, **meta)

