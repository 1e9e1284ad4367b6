"""Sampler registry: every sampler is one plain function with one signature.

``fn(model, x, sigmas, extra_args, ctx) -> x_final`` where ``model`` is the counting
denoiser (``model(x, sigma, **extra_args)``), ``x`` is the initial noise already scaled
by ``sigmas[0]``, and ``ctx`` (:class:`SamplingContext`) carries what some samplers need
besides sigmas: per-cell noise, the model's discrete schedule, the step count.

Names from InvokeAI (K_LMS), A1111 ("DPM++ 2M Karras"), ComfyUI (dpmpp_2m) and
diffusers class names resolve through :func:`resolve_sampler`; adding a sampler is one
decorated function (or an entry point in the ``convergence.samplers`` group).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import torch

from convergence.errors import ConvergenceError
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


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: SamplerFn
    family: str
    stochastic: bool
    native_schedule: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    #: False when the sampler couples batch rows (adaptive step control on a batch-wide
    #: error norm): such cells run one per batch so each image depends on its cell only
    rows_independent: bool = True


@dataclass(frozen=True)
class ResolvedSampler:
    spec: SamplerSpec
    schedule: str | None  # schedule named inside the alias (A1111 style), if any


_REGISTRY: dict[str, SamplerSpec] = {}
_ALIASES: dict[str, tuple[str, str | None]] = {}
#: sampler -> the diffusers-scheduler sampler of the same method (model.sampler_backend)
_EQUIVALENTS: dict[str, str] = {}
BACKENDS = ("k-diffusion", "diffusers")
_PLUGINS_LOADED = False


def _key(name: str) -> str:
    """Normalise a user-typed name: case, spaces, dashes, '+' and underscores."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower()).replace("+", "p")


def register_sampler(name: str, *, family: str, stochastic: bool = False,
                     native_schedule: str = "discrete", aliases: tuple[str, ...] = (),
                     scheduled_aliases: dict[str, str] | None = None,
                     description: str = "",
                     rows_independent: bool = True) -> Callable[[SamplerFn], SamplerFn]:
    """Decorator: register ``fn`` under ``name`` and its aliases.

    ``scheduled_aliases`` maps names that also fix the schedule (A1111's
    "DPM++ 2M Karras") to that schedule.
    """

    def deco(fn: SamplerFn) -> SamplerFn:
        if name in _REGISTRY:
            raise ValueError(f"sampler {name!r} registered twice")
        spec = SamplerSpec(name, fn, family, stochastic, native_schedule, tuple(aliases),
                           description or (fn.__doc__ or "").strip().split("\n")[0],
                           rows_independent)
        _REGISTRY[name] = spec
        for alias in (name, *aliases):
            _ALIASES.setdefault(_key(alias), (name, None))
        for alias, sched in (scheduled_aliases or {}).items():
            _ALIASES.setdefault(_key(alias), (name, sched))
        return fn

    return deco


def register_equivalent(sampler: str, scheduler: str) -> None:
    """Declare that ``scheduler`` (a diffusers-scheduler sampler) is the same method as
    ``sampler``, so ``model.sampler_backend=diffusers`` can swap one for the other."""
    _EQUIVALENTS[sampler] = scheduler


def _load_builtin_and_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from convergence.samplers import comfy_registry, compvis, kdiffusion  # noqa: F401  (registers)
    try:
        from convergence.samplers import diffusers_schedulers  # noqa: F401
    except ImportError:
        pass
    for ep in entry_points(group="convergence.samplers"):
        ep.load()


def available_samplers() -> dict[str, SamplerSpec]:
    _load_builtin_and_plugins()
    return dict(_REGISTRY)


def resolve_sampler(name: str, backend: str = "k-diffusion") -> ResolvedSampler:
    """Resolve any known spelling of a sampler, or fail listing close matches.

    ``backend="diffusers"`` picks the diffusers scheduler for names that exist in both
    families (euler -> EulerDiscreteScheduler, DDIM -> DDIMScheduler, ...), unless the
    name also fixes a schedule ("Euler Karras"), which only the k-diffusion one follows."""
    _load_builtin_and_plugins()
    if backend not in BACKENDS:
        raise ConvergenceError(f"unknown sampler_backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    hit = _ALIASES.get(_key(str(name)))
    if hit is None:
        by_key: dict[str, str] = {}
        for spec in _REGISTRY.values():  # canonical names first, one spelling per key
            for n in (spec.name, *spec.aliases):
                by_key.setdefault(_key(n), n)
        keys = difflib.get_close_matches(_key(str(name)), list(by_key), n=5, cutoff=0.6)
        close = [by_key[k] for k in keys]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConvergenceError(f"unknown sampler {name!r}{hint} (run `convergence samplers` for the list)")
    sampler, schedule = hit
    if backend == "diffusers" and schedule is None and _EQUIVALENTS.get(sampler) in _REGISTRY:
        sampler = _EQUIVALENTS[sampler]
    return ResolvedSampler(_REGISTRY[sampler], schedule)
