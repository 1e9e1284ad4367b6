"""Noise schedules, a separate axis from samplers (as in ComfyUI): name -> sigmas.

Every schedule returns ``steps + 1`` decreasing sigmas in float64 on the CPU. All but
``ddim_uniform`` end at 0 (the last step is a denoise); ``native`` means "the one the
sampler uses in its home software" and is resolved per sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from convergence.core.errors import ConvergenceError
from convergence.core.registries import SCHEDULES, register_schedule
from convergence.core.registry import normalize
from convergence.models.flow_matching import flow_sigma_to_ve
from convergence.models.vp import sigmas_from_alphas_cumprod
from convergence.samplers import k_sampling
from convergence.samplers.diffusers_adapter import euler_timesteps, t_to_sigma

ScheduleFn = Callable[[object, int], torch.Tensor]
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
        raise ConvergenceError(f"model {model.name!r} has no discrete (DDPM) training schedule; "
                               "use a continuous schedule (karras, exponential"
                               + (", flow_shift)" if hasattr(model, "flow_schedule") else ")"))
    return sigmas_from_alphas_cumprod(model.alphas_cumprod.to(torch.float64).cpu())


@register_schedule("karras")
def karras(model, n: int) -> torch.Tensor:
    """Karras et al. (2022), rho = 7: dense near sigma_min."""
    return k_sampling().get_sigmas_karras(n, model.sigma_min, model.sigma_max, rho=7.0).double()


@register_schedule("exponential")
def exponential(model, n: int) -> torch.Tensor:
    """Uniform in log sigma."""
    return k_sampling().get_sigmas_exponential(n, model.sigma_min, model.sigma_max).double()


@register_schedule("polyexponential")
def polyexponential(model, n: int) -> torch.Tensor:
    """Polynomial in log sigma (rho = 1 is exponential)."""
    return k_sampling().get_sigmas_polyexponential(n, model.sigma_min, model.sigma_max,
                                                   rho=1.0).double()


@register_schedule("discrete")
def discrete(model, n: int) -> torch.Tensor:
    """The model's own training timesteps, linearly spaced in t (k-diffusion / A1111
    default for K-samplers on SD): coarse near sigma_min. A diffusers model whose
    scheduler config asks for another ``timestep_spacing`` ("leading", as SDXL ships,
    or "trailing") gets the timesteps diffusers' Euler takes there; a flow-matching model
    its own shifted flow schedule (``flow_shift``)."""
    if hasattr(model, "flow_schedule"):
        return flow_shift(model, n)
    config = getattr(model, "scheduler_config", None)
    if config:
        ts = euler_timesteps(config, n)
        if ts is not None:
            return torch.cat([t_to_sigma(model.alphas_cumprod, ts), ts.new_zeros(1)])
    return _timesteps(model).get_sigmas(n).double()


@register_schedule("flow_shift")
def flow_shift(model, n: int) -> torch.Tensor:
    """A flow-matching model's own schedule: its scheduler's ``n`` flow times, uniform
    before the config's ``shift`` (3.0 for SD3) bends them towards noise, as sigma =
    t / (1 - t); the first (t = 1, pure noise) starts at the model's largest finite
    sigma."""
    if not hasattr(model, "flow_schedule"):
        raise ConvergenceError(f"schedule flow_shift is a flow-matching model's own (SD3); model "
                               f"{model.name!r} is not one (use discrete, karras or exponential)")
    return flow_sigma_to_ve(model.flow_schedule(n)).clamp(max=model.sigma_max)


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


# ComfyUI's schedulers, from their definitions. On a VP model the training time t runs
# over the discrete table (0 .. T-1, log-sigma interpolated between entries).


def _timesteps(model):
    """k-diffusion's DiscreteSchedule of the model's training sigmas (t <-> sigma)."""
    from k_diffusion.external import DiscreteSchedule
    return DiscreteSchedule(_discrete_sigmas(model), quantize=False)


def _t_span(model, n: int, endpoint: bool) -> torch.Tensor:
    ds = _timesteps(model)
    hi = ds.sigma_to_t(torch.tensor(model.sigma_max, dtype=torch.float64))
    lo = ds.sigma_to_t(torch.tensor(model.sigma_min, dtype=torch.float64))
    t = torch.linspace(float(hi), float(lo), n + (0 if endpoint else 1), dtype=torch.float64)
    return k_sampling().append_zero(ds.t_to_sigma(t if endpoint else t[:-1])).double()


@register_schedule("normal")
def normal(model, n: int) -> torch.Tensor:
    """ComfyUI's default: uniform in training time t from t(sigma_max) to t(sigma_min),
    then 0. On a model whose sigma range is its training table this equals ``discrete``."""
    return _t_span(model, n, endpoint=True)


@register_schedule("sgm_uniform")
def sgm_uniform(model, n: int) -> torch.Tensor:
    """Uniform in t over n + 1 points from t(sigma_max) towards t(sigma_min), the last
    dropped for 0 (Stability's SGM "uniform" discretization): skips the smallest sigma."""
    return _t_span(model, n, endpoint=False)


@register_schedule("simple")
def simple(model, n: int) -> torch.Tensor:
    """Every (T/n)-th training sigma from the top (ComfyUI's "simple"), then 0."""
    sig = _discrete_sigmas(model)
    T = len(sig)
    if n > T:
        raise ConvergenceError(f"simple cannot take {n} steps (the model has {T} timesteps)")
    idx = [T - 1 - int(k * T / n) for k in range(n)]
    return k_sampling().append_zero(sig[idx]).double()


@register_schedule("beta")
def beta(model, n: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Lee et al. (2024), "Beta Sampling is All You Need" (arXiv:2407.12173): timesteps
    at the Beta(0.6, 0.6) quantiles of 1 - k/n, dense at both ends. t stays continuous
    (rounding to integer timesteps repeats sigmas once n nears T)."""
    from scipy.stats import beta as beta_dist

    ds = _timesteps(model)
    q = 1 - torch.arange(n, dtype=torch.float64).numpy() / n
    t = torch.from_numpy(beta_dist.ppf(q, alpha, beta_)) * (len(ds.sigmas) - 1)
    return k_sampling().append_zero(ds.t_to_sigma(t.to(torch.float64))).double()


@register_schedule("linear_quadratic")
def linear_quadratic(model, n: int, threshold: float = 0.025) -> torch.Tensor:
    """Mochi's (Genmo 2024) schedule for flow models, sigma = sigma_max (1 - u(i)): u linear
    from 0 to ``threshold`` over the first n//2 steps, then the quadratic with matching
    value and slope at n//2 that reaches 1 at step n."""
    lin = n // 2
    if lin == 0:
        return torch.tensor([model.sigma_max, 0.0], dtype=torch.float64)
    i = torch.arange(n + 1, dtype=torch.float64)
    slope = threshold / lin
    quad = n - lin
    a = (1 - threshold - slope * quad) / quad**2
    u = torch.where(i <= lin, slope * i, a * (i - lin) ** 2 + slope * i)
    return model.sigma_max * (1 - u)


@register_schedule("kl_optimal")
def kl_optimal(model, n: int) -> torch.Tensor:
    """Sabour, Fidler & Kreis (2024), "Align Your Steps" (arXiv:2404.14507, App. on the
    KL-optimal schedule): uniform in arctan(sigma) from sigma_max to sigma_min, then 0."""
    a = torch.linspace(math.atan(model.sigma_max), math.atan(model.sigma_min), n,
                       dtype=torch.float64)
    return k_sampling().append_zero(torch.tan(a))


def get_sigmas(model, schedule: str, steps: int) -> torch.Tensor:
    if steps < 1:
        raise ConvergenceError(f"steps must be >= 1, got {steps}")
    sigmas = SCHEDULES.get(schedule, extra_names=(NATIVE,))(model, steps)
    if len(sigmas) != steps + 1:
        raise ConvergenceError(f"schedule {schedule!r} returned {len(sigmas)} sigmas for "
                               f"steps={steps}; a schedule returns steps + 1")
    return torch.as_tensor(sigmas).double().cpu()
