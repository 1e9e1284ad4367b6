"""What a registered sampler is, and how a name resolves to one.

A sampler is a plain function with k-diffusion's signature,

    fn(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
       **options) -> x_final

plus metadata (claimed order, NFE per step, stochastic or not), so any k-diffusion or
ComfyUI sampler registers unchanged. ``model`` is the counting denoiser
(``model(x, sigma, **extra_args)``), ``x`` the initial noise already scaled by
``sigmas[0]``. The harness passes only the keywords the function accepts: a seeded
per-cell ``noise_sampler`` (so a stochastic image depends on its cell's seed only), the
study's ``sampler_options``, and ``context`` (:class:`SamplingContext`: the step count,
the model's discrete schedule, ...) to functions that ask for it.

Names from InvokeAI (K_LMS), A1111 ("DPM++ 2M Karras"), ComfyUI (dpmpp_2m) and diffusers
class names resolve through :func:`resolve_sampler`, ignoring case. Built-ins and third
parties register with ``convergence.core.registries.register_sampler`` (a decorator right
above the function), an entry point in the ``convergence.samplers`` group, a Hydra
``_target_`` in ``samplers=[…]``, or ``plugins=[module]`` (docs/plugins.md).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from convergence.core.errors import ConvergenceError
from convergence.core.registries import SAMPLER_META, SAMPLERS
from convergence.core.registry import load_object, normalize
from convergence.samplers.noise import CellNoise


@dataclass
class SamplingContext:
    """Everything a sampler may need besides the denoiser, x and sigmas."""

    noise: CellNoise
    steps: int
    alphas_cumprod: torch.Tensor | None = None
    options: dict = field(default_factory=dict)
    #: the model's diffusers scheduler config (diffusers-scheduler samplers start from it)
    scheduler_config: dict | None = None


SamplerFn = Callable[..., torch.Tensor]
NOISE_KINDS = ("gaussian", "brownian")
LIMITS = ("zero", "sigma_min", "none")


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: the function (or a lazy ``module:attr``) and its claims."""

    name: str
    sampler: SamplerFn | str
    family: str = "plugin"
    stochastic: bool = False
    #: claimed order of accuracy of the deterministic method (None: no claim)
    order: float | None = None
    #: claimed NFE: ``nfe_per_step * steps + nfe_offset`` model calls per image
    #: (heun: 2, -1: its last step to sigma = 0 is an Euler step); None = adaptive
    nfe_per_step: float | None = 1
    nfe_offset: int = 0
    #: the noise_sampler handed to stochastic samplers: "gaussian" (independent draws) or
    #: "brownian" (a Brownian tree, for SDE samplers)
    noise: str = "gaussian"
    native_schedule: str = "discrete"
    #: where it ends on a schedule to sigma = 0: "zero" (the data: D(x(sigma_min)) or x(0))
    #: or "sigma_min" (x(sigma_min), e.g. k-diffusion's dpm_fast/dpm_adaptive); "none" for a
    #: deterministic method that approaches no limit as its app computes it (ComfyUI's
    #: ipndm_v, CFG++ at CFG 1: docs/samplers.md), so check does not judge one
    limit: str = "zero"
    aliases: tuple[str, ...] = ()
    description: str = ""
    #: False when the sampler couples batch rows (adaptive step control on a batch-wide
    #: error norm): such cells run one per batch so each image depends on its cell only
    rows_independent: bool = True
    #: names that also fix the schedule (A1111's "DPM++ 2M Karras"): (name, schedule) pairs
    scheduled: tuple[tuple[str, str], ...] = ()
    #: the diffusers-scheduler sampler of the same method (``model.sampler_backend=diffusers``)
    diffusers: str | None = None

    def function(self) -> SamplerFn:
        return load_object(self.sampler) if isinstance(self.sampler, str) else self.sampler

    def claimed_nfe(self, steps: int) -> int | None:
        if self.nfe_per_step is None:
            return None
        return int(round(self.nfe_per_step * steps + self.nfe_offset))

    def fn(self, model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict,
           ctx: SamplingContext, callback=None) -> torch.Tensor:
        """Run the sampler the way the harness does: its k-diffusion signature, with the
        keywords it accepts."""
        fn = self.function()
        params = _parameters(fn)
        kwargs: dict[str, Any] = {"extra_args": extra_args, "callback": callback,
                                  "disable": True}
        if "noise_sampler" in params:
            kwargs["noise_sampler"] = self.noise_sampler(x, sigmas, ctx)
        if "context" in params:
            kwargs["context"] = ctx
        kwargs.update(ctx.options)
        if not _var_kw(params):   # options a sampler does not take are not its options
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        return fn(model, x, sigmas, **kwargs)

    def noise_sampler(self, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplingContext):
        """Per-row seeded noise, so a cell's image does not depend on its batch."""
        if self.noise == "brownian":
            pos = sigmas[sigmas > 0]
            return ctx.noise.brownian(x, float(pos.min()), float(pos.max()))
        return ctx.noise.gaussian(x)


def _parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def _var_kw(params: dict[str, inspect.Parameter]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def make_spec(name: str, obj: Any, meta: dict) -> SamplerSpec:
    """A SamplerSpec from a plain function (+ the claims its decorator recorded) or an
    existing spec (the registry's ``wrap``)."""
    meta = _normalized(meta)
    if isinstance(obj, SamplerSpec):
        return replace(obj, name=name, **meta)
    merged = {**_normalized(getattr(obj, "convergence_meta", {})), **meta}
    bad = set(merged) - set(SAMPLER_META) - {"aliases"}
    if bad:
        raise ValueError(f"sampler {name!r}: unknown claim {sorted(bad)[0]!r}; use "
                         f"{', '.join(SAMPLER_META)}")
    if not callable(obj) and not isinstance(obj, str):
        raise ConvergenceError(f"sampler {name!r} is not callable ({type(obj).__name__})")
    doc = "" if isinstance(obj, str) else (getattr(obj, "__doc__", "") or "")
    merged.setdefault("description", doc.strip().split("\n")[0])
    merged["aliases"] = tuple(merged.get("aliases", ()))
    spec = SamplerSpec(name, obj, **merged)
    _check_spec(spec)
    return spec


def _normalized(meta: dict) -> dict:
    """``scheduled`` as (name, schedule) pairs, ``aliases`` as a tuple (specs are frozen)."""
    meta = dict(meta)
    if isinstance(meta.get("scheduled"), dict):
        meta["scheduled"] = tuple(meta["scheduled"].items())
    if "aliases" in meta:
        meta["aliases"] = tuple(meta["aliases"])
    return meta


def _check_spec(spec: SamplerSpec) -> None:
    if spec.limit not in LIMITS:
        raise ValueError(f"sampler {spec.name!r}: limit must be one of {LIMITS}")
    if spec.noise not in NOISE_KINDS:
        raise ValueError(f"sampler {spec.name!r}: noise must be one of {NOISE_KINDS}")
    if spec.nfe_per_step is not None and not (spec.nfe_per_step > 0 and math.isfinite(spec.nfe_per_step)):
        raise ValueError(f"sampler {spec.name!r}: nfe_per_step must be > 0 or None")


BACKENDS = ("k-diffusion", "diffusers")


@dataclass(frozen=True)
class ResolvedSampler:
    spec: SamplerSpec
    schedule: str | None  # schedule named inside the alias (A1111 style), if any


def available_samplers() -> dict[str, SamplerSpec]:
    return {name: e.load() for name, e in SAMPLERS.entries().items()}


_SCHEDULED: tuple[int, dict[str, tuple[str, str]]] = (-1, {})


def scheduled_names() -> dict[str, tuple[str, str]]:
    """Normalised name that also fixes a schedule -> (sampler, schedule), from the
    samplers' own declarations (rebuilt when the registry changes)."""
    global _SCHEDULED
    SAMPLERS.load_builtins()
    if _SCHEDULED[0] != SAMPLERS.version:
        index: dict[str, tuple[str, str]] = {}
        for name, entry in SAMPLERS.entries().items():
            for alias, schedule in entry.target.scheduled:
                index.setdefault(normalize(alias), (name, schedule))
        _SCHEDULED = (SAMPLERS.version, index)
    return _SCHEDULED[1]


def resolve_sampler(name: str, backend: str = "k-diffusion") -> ResolvedSampler:
    """Resolve any known spelling of a sampler, or fail listing close matches.

    ``backend="diffusers"`` picks the diffusers scheduler for names that exist in both
    families (euler -> EulerDiscreteScheduler, DDIM -> DDIMScheduler, ...), unless the
    name also fixes a schedule ("Euler Karras"), which only the k-diffusion one follows."""
    if backend not in BACKENDS:
        raise ConvergenceError(f"unknown sampler_backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    scheduled = scheduled_names().get(normalize(str(name)))
    if scheduled is not None and str(name) not in SAMPLERS:
        return ResolvedSampler(SAMPLERS.get(scheduled[0]), scheduled[1])
    if str(name) not in SAMPLERS:
        raise ConvergenceError(SAMPLERS.unknown_message(str(name))
                               + " (run `convergence samplers` for the list)")
    spec = SAMPLERS.get(str(name))
    if backend == "diffusers" and spec.diffusers in SAMPLERS.names():
        spec = SAMPLERS.get(spec.diffusers)
    return ResolvedSampler(spec, None)
