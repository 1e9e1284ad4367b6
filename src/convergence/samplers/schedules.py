"""Noise schedules, a separate axis from samplers (as in ComfyUI): name -> sigmas.

Every schedule returns ``steps + 1`` decreasing sigmas in float64 on the CPU. All but
``ddim_uniform`` end at 0 (the last step is a denoise); ``native`` means "the one the
sampler uses in its home software" and is resolved per sampler.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from k_diffusion import sampling as ks
from k_diffusion.external import DiscreteSchedule

from convergence.errors import ConvergenceError
from convergence.models.vp import sigmas_from_alphas_cumprod
from convergence.registry import Registry, normalize

ScheduleFn = Callable[[object, int], torch.Tensor]
#: ``fn(model, steps) -> steps + 1 sigmas``; third parties add to it through the
#: ``convergence.schedules`` entry-point group, plugins or a ``_target_`` (docs/plugins.md)
SCHEDULES: Registry[ScheduleFn] = Registry("schedule", group="convergence.schedules")
register_schedule = SCHEDULES.register
NATIVE = "native"


def schedule_names() -> list[str]:
    return [*SCHEDULES.names(), NATIVE]


def canonical_schedule(name) -> str:
    """The registered name of any spelling ("Karras" -> "karras"), "native", or the name
    a ``{_target_: ...}`` mapping was registered under; a ConvergenceError otherwise."""
    if not isinstance(name, str):
        return SCHEDULES.from_target(name)
    if normalize(name) == NATIVE:
        return NATIVE
    return SCHEDULES.canonical(name, extra_names=(NATIVE,))


def _discrete_sigmas(model) -> torch.Tensor:
    if model.alphas_cumprod is None:
        raise ConvergenceError(f"model {model.name!r} has no discrete training schedule")
    return sigmas_from_alphas_cumprod(model.alphas_cumprod.to(torch.float64).cpu())


@register_schedule("karras")
def karras(model, n: int) -> torch.Tensor:
    """Karras et al. (2022), rho = 7: dense near sigma_min."""
    return ks.get_sigmas_karras(n, model.sigma_min, model.sigma_max, rho=7.0).double()


@register_schedule("exponential")
def exponential(model, n: int) -> torch.Tensor:
    """Uniform in log sigma."""
    return ks.get_sigmas_exponential(n, model.sigma_min, model.sigma_max).double()


@register_schedule("polyexponential")
def polyexponential(model, n: int) -> torch.Tensor:
    """Polynomial in log sigma (rho = 1 is exponential)."""
    return ks.get_sigmas_polyexponential(n, model.sigma_min, model.sigma_max, rho=1.0).double()


@register_schedule("discrete")
def discrete(model, n: int) -> torch.Tensor:
    """The model's own training timesteps, linearly spaced in t (k-diffusion / A1111
    default for K-samplers on SD): coarse near sigma_min."""
    return DiscreteSchedule(_discrete_sigmas(model), quantize=False).get_sigmas(n).double()


@register_schedule("ddim_uniform")
def ddim_uniform(model, n: int) -> torch.Tensor:
    """CompVis DDIM/PLMS timesteps 1 + k*(T // n), then down to ā_0 (sigma(t=0))."""
    sig = _discrete_sigmas(model)
    T = len(sig)
    c = T // n
    if c < 1:
        raise ConvergenceError(f"ddim_uniform cannot take {n} steps (the model has {T} timesteps)")
    ts = torch.arange(0, T, c)[:n] + 1
    ts = ts.clamp(max=T - 1)
    return torch.cat([sig[ts].flip(0), sig[:1]]).double()


def get_sigmas(model, schedule: str, steps: int) -> torch.Tensor:
    if steps < 1:
        raise ConvergenceError(f"steps must be >= 1, got {steps}")
    sigmas = SCHEDULES.get(schedule, extra_names=(NATIVE,))(model, steps)
    if len(sigmas) != steps + 1:
        raise ConvergenceError(f"schedule {schedule!r} returned {len(sigmas)} sigmas for "
                               f"steps={steps}; a schedule returns steps + 1")
    return torch.as_tensor(sigmas).double().cpu()
