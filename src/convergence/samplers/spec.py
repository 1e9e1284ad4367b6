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
class names resolve through :func:`resolve_sampler`, ignoring case, except where two apps
give one spelling two meanings (samplers/apps.py). Built-ins and third parties register
with ``convergence.core.registries.register_sampler`` (a decorator right above the
function), an entry point in the ``convergence.samplers`` group, a Hydra ``_target_`` in
``samplers=[…]``, or ``plugins=[module]`` (docs/plugins.md). A diffusers
``SchedulerMixin`` class registered any of these ways runs through the same adapter as
the built-in diffusers schedulers.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from convergence.core.errors import ConvergenceError
from convergence.core.registries import SAMPLER_META, SAMPLERS
from convergence.core.registry import load_object, normalize
from convergence.samplers.apps import (
    A1111,
    APPS,
    COMFYUI,
    COMFYUI_RUNS,
    INVOKEAI,
    AppName,
    app_names,
    qualified,
)
from convergence.samplers.diffusers_adapter import adapter
from convergence.samplers.noise import CellNoise
from convergence.samplers.schedules import get_sigmas


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
    #: A1111's ``discard_next_to_last_sigma``: the schedule is built for steps + 1 and its
    #: next-to-last sigma dropped (:meth:`sigmas`); set by resolving an A1111 name
    discard_penultimate: bool = False

    def function(self) -> SamplerFn:
        return load_object(self.sampler) if isinstance(self.sampler, str) else self.sampler

    def sigmas(self, model, schedule: str, steps: int) -> torch.Tensor:
        """The ``steps + 1`` sigmas this sampler runs a cell on: the schedule's, or for
        A1111's DPM2 pair the schedule of steps + 1 without its next-to-last sigma."""
        if not self.discard_penultimate:
            return get_sigmas(model, schedule, steps)
        s = get_sigmas(model, schedule, steps + 1)
        return torch.cat([s[:-2], s[-1:]])

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
        # what ComfyUI samplers read from extra_args (the denoiser ignores both): the seed
        # of the batch's first cell, and model_options (carried, not applied)
        extra_args = {"seed": int(ctx.noise.seeds[0]), "model_options": {}, **extra_args}
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
    scheduler = _scheduler_class(obj)
    if scheduler is not None:   # a diffusers scheduler class (or a partial of one)
        cls, options = scheduler
        merged.setdefault("family", "diffusers")
        merged.setdefault("description", f"diffusers scheduler {cls.__module__}.{cls.__name__}"
                          + (f" {options}" if options else ""))
        obj = adapter(name, cls, **options)
    elif not isinstance(obj, str):
        _check_sampler_callable(name, obj)
    doc = "" if isinstance(obj, str) else (getattr(obj, "__doc__", "") or "")
    merged.setdefault("description", doc.strip().split("\n")[0])
    merged["aliases"] = tuple(merged.get("aliases", ()))
    spec = SamplerSpec(name, obj, **merged)
    _check_spec(spec)
    return spec


EXPECTED = ("a sampler function fn(model, x, sigmas, extra_args=None, callback=None, "
            "disable=None, ...) or a diffusers SchedulerMixin class")


def _scheduler_class(obj: Any) -> tuple[type, dict] | None:
    """(class, config options) when ``obj`` is a diffusers ``SchedulerMixin`` subclass or a
    ``functools.partial`` of one (a ``_target_`` node with options); recognised by its
    bases' names, so checking a plain function imports no diffusers."""
    options: dict = {}
    if isinstance(obj, functools.partial) and not obj.args:
        obj, options = obj.func, dict(obj.keywords)
    if inspect.isclass(obj) and any(c.__name__ == "SchedulerMixin"
                                    and c.__module__.startswith("diffusers")
                                    for c in obj.__mro__):
        return obj, options
    return None


def _check_sampler_callable(name: str, obj: Any) -> None:
    """One line naming what was expected, for anything that cannot be called as a
    sampler: not callable, a class, or a function that does not take (model, x, sigmas)."""
    what = f"{type(obj).__name__} {getattr(obj, '__qualname__', '')}".strip()
    if not callable(obj) or inspect.isclass(obj):
        raise ConvergenceError(f"sampler {name!r} is a {what}; expected {EXPECTED}")
    params = _parameters(obj)
    positional = [p for p in params.values() if p.kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    takes_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    if params and not takes_args and len(positional) < 3:
        raise ConvergenceError(f"sampler {name!r} ({what}) takes "
                               f"({', '.join(params)}); expected {EXPECTED}")


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


_INDEX: tuple[int, dict[str, tuple[str, str | None]], dict[str, tuple[str, str]]] = (-1, {}, {})


def _index() -> tuple[dict[str, tuple[str, str | None]], dict[str, tuple[str, str]]]:
    """(every registered spelling as typed -> (sampler, schedule or None), normalised name
    that also fixes a schedule -> (sampler, schedule)), from the samplers' own declarations
    (rebuilt when the registry changes)."""
    global _INDEX
    SAMPLERS.load_builtins()
    if _INDEX[0] != SAMPLERS.version:
        exact: dict[str, tuple[str, str | None]] = {}
        scheduled: dict[str, tuple[str, str]] = {}
        for name, entry in SAMPLERS.entries().items():
            for spelling in (name, *entry.target.aliases):
                exact.setdefault(spelling, (name, None))
            for alias, schedule in entry.target.scheduled:
                exact.setdefault(alias, (name, schedule))
                scheduled.setdefault(normalize(alias), (name, schedule))
        _INDEX = (SAMPLERS.version, exact, scheduled)
    return _INDEX[1], _INDEX[2]


def scheduled_names() -> dict[str, tuple[str, str]]:
    """Normalised name that also fixes a schedule -> (sampler, schedule)."""
    return _index()[1]


def resolve_sampler(name: str, backend: str = "k-diffusion") -> ResolvedSampler:
    """Resolve any known spelling of a sampler, or fail listing close matches.

    In order: a registered spelling exactly as typed; an A1111 or InvokeAI name exactly as
    typed (so InvokeAI's ``unipc`` and A1111's ``DPM2`` are theirs while ComfyUI's
    ``uni_pc`` and ``dpm_2`` stay ComfyUI's); any registered spelling ignoring case,
    spaces, ``_`` and ``-``; then the apps' names so. ``APP:NAME`` (apps.APPS) reaches an
    app's meaning directly. ``backend="diffusers"`` picks the diffusers scheduler for names
    that exist in both families (euler -> EulerDiscreteScheduler, ...) unless the name also
    fixes a schedule ("Euler Karras"), and for InvokeAI names its map's class and options."""
    if backend not in BACKENDS:
        raise ConvergenceError(f"unknown sampler_backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    text = str(name)
    exact, scheduled = _index()
    hit = exact.get(text)
    app = qualified(text)
    if hit is None and app is not None:
        return _resolve_qualified(app[0], app[1])
    if hit is None:
        named = _app_name(text, (*A1111, *INVOKEAI))
        if named is not None:
            return _from_app(named, backend)
        key = normalize(text)
        if key in scheduled and text not in SAMPLERS:
            hit = scheduled[key]
        elif text in SAMPLERS:
            hit = (SAMPLERS.canonical(text), None)
        else:
            named = _app_name(text, (*A1111, *INVOKEAI), exact_only=False)
            if named is None:
                raise ConvergenceError(SAMPLERS.unknown_message(text)
                                       + " (run `convergence samplers` for the list)")
            return _from_app(named, backend)
    spec = SAMPLERS.get(hit[0])
    if hit[1] is None and backend == "diffusers" and spec.diffusers in SAMPLERS.names():
        spec = SAMPLERS.get(spec.diffusers)
    return ResolvedSampler(spec, hit[1])


def _app_name(text: str, names: tuple[AppName, ...], exact_only: bool = True) -> AppName | None:
    """The first of ``names`` spelled ``text`` exactly, or (``exact_only=False``) the
    first spelled so ignoring case, spaces, ``_`` and ``-``."""
    for n in names:
        if n.name == text:
            return n
    if not exact_only:
        key = normalize(text)
        for n in names:
            if normalize(n.name) == key:
                return n
    return None


def _resolve_qualified(app: str, bare: str) -> ResolvedSampler:
    """``APP:NAME`` is what that app runs under NAME, whatever the backend (InvokeAI: its
    map's diffusers class and options): A1111 and InvokeAI names from their tables;
    ComfyUI's names, and the k-diffusion and diffusers families' names, from the registry."""
    table = app_names(app)
    if table:
        named = _app_name(bare, table, exact_only=False)
        if named is None:
            raise ConvergenceError(f"unknown {app} sampler {bare!r}; {app}'s names: "
                                   + ", ".join(n.name for n in table))
        return _from_app(named, "diffusers")
    if app == "comfyui":
        known = {normalize(n): n for n in (*COMFYUI, *COMFYUI_RUNS)}
        if normalize(bare) not in known:
            raise ConvergenceError(f"unknown comfyui sampler {bare!r}; ComfyUI's names here: "
                                   + ", ".join((*COMFYUI, *COMFYUI_RUNS)))
        name = known[normalize(bare)]
        return resolve_sampler(COMFYUI_RUNS.get(name, name))
    family = {"k-diffusion": "k-diffusion", "diffusers": "diffusers"}[app]
    if bare in SAMPLERS and SAMPLERS.get(bare).family == family:
        return resolve_sampler(SAMPLERS.canonical(bare))
    names = [n for n, sp in available_samplers().items() if sp.family == family]
    raise ConvergenceError(f"unknown {app} sampler {bare!r}; {app}'s: {', '.join(names)}"
                           + (" (a diffusers scheduler class of your own: `convergence check "
                              "module:Class` or a {_target_: module.Class} node)"
                              if app == "diffusers" else ""))


_BUILT: dict[str, SamplerSpec] = {}


def _from_app(named: AppName, backend: str) -> ResolvedSampler:
    """What an A1111 or InvokeAI name runs: the registered sampler (A1111's DPM2 pair with
    its discarded sigma, under the name ``a1111:LABEL``), or with the diffusers backend
    InvokeAI's scheduler class and options."""
    if named.app == "a1111":
        spec = SAMPLERS.get(named.sampler)
        if named.discard_penultimate:
            spec = _derived(f"a1111:{_a1111_label(named)}", lambda: replace(
                spec, name=f"a1111:{_a1111_label(named)}", aliases=(), scheduled=(),
                diffusers=None, discard_penultimate=True,
                description=f"A1111 {_a1111_label(named)}: {spec.name} on a schedule of "
                "steps + 1 without its next-to-last sigma"))
        return ResolvedSampler(spec, named.schedule)
    if backend == "k-diffusion" and not named.sampler.startswith("invokeai:"):
        return ResolvedSampler(SAMPLERS.get(named.sampler), named.schedule)
    if named.exact:
        return ResolvedSampler(SAMPLERS.get(named.like), None)
    qname = f"invokeai:{named.name}"
    opts = ", ".join(f"{k}={v}" for k, v in named.diffusers_options.items())
    return ResolvedSampler(_derived(qname, lambda: replace(
        SAMPLERS.get(named.like), name=qname, aliases=(), scheduled=(), diffusers=None,
        sampler=adapter(qname, named.diffusers_cls, **named.diffusers_options),
        description=f"InvokeAI {named.name}: diffusers {named.diffusers_cls}({opts})")), None)


def _a1111_label(named: AppName) -> str:
    """The A1111 label without schedule of ``named``'s sampler ("DPM2 Karras" -> "DPM2")."""
    return next(n.name for n in A1111 if n.sampler == named.sampler and n.schedule is None
                and n.discard_penultimate == named.discard_penultimate)


def _derived(name: str, make: Callable[[], SamplerSpec]) -> SamplerSpec:
    """A spec that an app name derives from a registered one, built once."""
    if name not in _BUILT:
        _BUILT[name] = make()
    return _BUILT[name]


def app_of(text: str) -> tuple[str, ...]:
    """The apps whose own name ``text`` is, as typed (for the listing)."""
    apps = [n.app for n in (*A1111, *INVOKEAI) if n.name == text]
    if text in COMFYUI:
        apps.insert(0, "comfyui")
    return tuple(a for a in APPS if a in apps)


@dataclass(frozen=True)
class NameRow:
    """One name a user can type: the apps it comes from, what it runs (with each backend)
    and the schedule it fixes (None: the study's)."""

    name: str
    apps: tuple[str, ...]
    runs: str
    schedule: str | None
    runs_diffusers: str


_FAMILY_APP = {"k-diffusion": "k-diffusion", "diffusers": "diffusers", "comfyui": "comfyui",
               "compvis": "compvis"}


def _runs(r: ResolvedSampler) -> str:
    if r.spec.discard_penultimate:
        return f"{r.spec.name.partition(':')[2] or r.spec.name} = {r.spec.description}"
    return r.spec.description if r.spec.name.startswith("invokeai:") else r.spec.name


def _same(a: ResolvedSampler, b: ResolvedSampler) -> bool:
    return (a.spec.name, a.schedule) == (b.spec.name, b.schedule)


def sampler_names() -> list[NameRow]:
    """Every name that resolves: registered names, aliases and names that fix a schedule,
    the A1111 and InvokeAI tables' names, and ``APP:NAME`` where the plain spelling means
    something else."""
    exact, _ = _index()
    typed = list(exact) + [n.name for n in (*A1111, *INVOKEAI) if n.name not in exact]
    rows = []
    for text in typed:
        r, d = resolve_sampler(text), resolve_sampler(text, "diffusers")
        # an app's name where the plain spelling means that app's sampler (InvokeAI's:
        # with the diffusers backend, as InvokeAI runs it)
        apps = tuple(a for a in app_of(text) if not app_names(a) or _same(
            resolve_sampler(f"{a}:{text}"), d if a == "invokeai" else r))
        if text in exact:
            spec = SAMPLERS.get(exact[text][0])
            if text == spec.name:  # a canonical name: its family's (this project's own
                # variant of a ComfyUI sampler: "convergence")
                own = _FAMILY_APP.get(spec.family, spec.family)
                own = "convergence" if own == "comfyui" and text not in COMFYUI else own
                apps = tuple(dict.fromkeys((*apps, own)))
            if exact[text][1] and text.endswith((" Karras", " Exponential")) and not apps:
                apps = ("a1111",)  # A1111's later "NAME Karras/Exponential" labels
        rows.append(NameRow(text, apps, _runs(r), r.schedule, _runs(d)))
    for app, name in [*(("comfyui", n) for n in COMFYUI_RUNS),
                      *((n.app, n.name) for n in (*A1111, *INVOKEAI))]:
        q = resolve_sampler(f"{app}:{name}")
        if not _same(q, resolve_sampler(name)):
            rows.append(NameRow(f"{app}:{name}", (app,), _runs(q), q.schedule, _runs(q)))
    return rows


def resolves(name: str) -> bool:
    """Whether ``name`` is a sampler name (``APP:NAME`` included), not a ``module:attr``."""
    try:
        resolve_sampler(name)
    except ConvergenceError:
        return False
    return True
