"""k-diffusion's samplers, registered unchanged under their ComfyUI names with the
guide's and A1111's aliases and their claims (order, NFE per step). Names whose meaning
differs between apps (A1111's "DPM2" discards a sigma, InvokeAI's "*_k" run diffusers
schedulers there) live in samplers/apps.py instead.

Orders are those of the method on a smooth ODE; NFE is ``nfe_per_step * steps +
nfe_offset`` (the 2-stage methods take an Euler step to sigma = 0, one call, hence -1).
Stochastic samplers claim no order (they converge in distribution, not to the ODE's
limit). `convergence check` and benchmarks/sampler_table.py measure both.
"""

from __future__ import annotations

import inspect

from convergence.core.registries import register_sampler
from convergence.samplers import k_sampling

KARRAS = "karras"


def a1111(name: str) -> dict[str, str]:
    """A1111's names that fix the schedule: "NAME Karras", "NAME Exponential"."""
    return {f"{name} Karras": KARRAS, f"{name} Exponential": "exponential"}


def _k(fn_name: str, model, x, sigmas, extra_args, callback, disable, **options):
    """Call ``k_diffusion.sampling.<fn_name>`` with the options it takes (the harness hands
    every sampler its noise sampler and the study's options; each takes its own)."""
    fn = getattr(k_sampling(), fn_name)
    params = inspect.signature(fn).parameters
    return fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
              **{k: v for k, v in options.items() if k in params})


@register_sampler("euler", family="k-diffusion", order=1, diffusers="EulerDiscreteScheduler",
                  aliases=("K_EULER", "Euler"), scheduled=a1111("Euler"))
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 noise_sampler=None, **options):
    """Euler (1st order, 1 NFE/step)."""
    return _k("sample_euler", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


@register_sampler("euler_ancestral", family="k-diffusion", stochastic=True,
                  diffusers="EulerAncestralDiscreteScheduler", aliases=("K_EULER_A", "Euler a"),
                  scheduled=a1111("Euler a"))
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           noise_sampler=None, **options):
    """Euler ancestral (stochastic)."""
    return _k("sample_euler_ancestral", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


@register_sampler("heun", family="k-diffusion", order=2, nfe_per_step=2, nfe_offset=-1,
                  diffusers="HeunDiscreteScheduler", aliases=("K_HEUN", "Heun"),
                  scheduled=a1111("Heun"))
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                noise_sampler=None, **options):
    """Heun (2nd order, 2 NFE/step; the last step to sigma = 0 is an Euler step)."""
    return _k("sample_heun", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


@register_sampler("dpm_2", family="k-diffusion", order=2, nfe_per_step=2, nfe_offset=-1,
                  diffusers="KDPM2DiscreteScheduler", aliases=("K_DPM_2", "kdpm_2"), scheduled={"kdpm_2_k": KARRAS})
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 noise_sampler=None, **options):
    """DPM-2 (2nd order, 2 NFE/step)."""
    return _k("sample_dpm_2", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


@register_sampler("dpm_2_ancestral", family="k-diffusion", stochastic=True, nfe_per_step=2,
                  nfe_offset=-1, diffusers="KDPM2AncestralDiscreteScheduler",
                  aliases=("K_DPM_2_A", "kdpm_2_a"), scheduled={"kdpm_2_a_k": KARRAS})
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           noise_sampler=None, **options):
    """DPM-2 ancestral (stochastic)."""
    return _k("sample_dpm_2_ancestral", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


# linear multistep of order 4, but its first step is an Euler step (local error O(h^2))
# and the next two have orders 2 and 3, so the global error is O(h^2) (measured: README)
@register_sampler("lms", family="k-diffusion", order=2, diffusers="LMSDiscreteScheduler",
                  aliases=("K_LMS", "LMS"), scheduled=a1111("LMS"))
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None,
               noise_sampler=None, **options):
    """linear multistep, order 4 after a lower-order start."""
    return _k("sample_lms", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


@register_sampler("dpmpp_2s_ancestral", family="k-diffusion", stochastic=True, nfe_per_step=2,
                  nfe_offset=-1, aliases=("DPM++ 2S a",), scheduled=a1111("DPM++ 2S a"))
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                              noise_sampler=None, **options):
    """DPM-Solver++(2S) ancestral (stochastic)."""
    return _k("sample_dpmpp_2s_ancestral", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


@register_sampler("dpmpp_sde", family="k-diffusion", stochastic=True, noise="brownian",
                  nfe_per_step=2, nfe_offset=-1, aliases=("DPM++ SDE", "dpmpp_sde_gpu"),
                  scheduled=a1111("DPM++ SDE"))
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     noise_sampler=None, **options):
    """DPM-Solver++ SDE (stochastic, 2 NFE/step)."""
    return _k("sample_dpmpp_sde", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


# InvokeAI 2.3 called it k_dpmpp_2 (k_dpmpp_2_karras)
@register_sampler("dpmpp_2m", family="k-diffusion", order=2,
                  diffusers="DPMSolverMultistepScheduler", aliases=("DPM++ 2M", "k_dpmpp_2"),
                  scheduled={"k_dpmpp_2_karras": KARRAS, **a1111("DPM++ 2M")})
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    noise_sampler=None, **options):
    """DPM-Solver++(2M) (2nd order multistep)."""
    return _k("sample_dpmpp_2m", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


# ComfyUI's *_gpu variants draw the same Brownian noise on the GPU: the same method
@register_sampler("dpmpp_2m_sde", family="k-diffusion", stochastic=True, noise="brownian",
                  diffusers="DPMSolverMultistepScheduler_SDE",
                  aliases=("DPM++ 2M SDE", "dpmpp_2m_sde_gpu"),
                  scheduled=a1111("DPM++ 2M SDE"))
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        noise_sampler=None, **options):
    """DPM-Solver++(2M) SDE (stochastic)."""
    return _k("sample_dpmpp_2m_sde", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


@register_sampler("dpmpp_3m_sde", family="k-diffusion", stochastic=True, noise="brownian",
                  aliases=("DPM++ 3M SDE", "dpmpp_3m_sde_gpu"), scheduled=a1111("DPM++ 3M SDE"))
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        noise_sampler=None, **options):
    """DPM-Solver++(3M) SDE (stochastic)."""
    return _k("sample_dpmpp_3m_sde", model, x, sigmas, extra_args, callback, disable,
              noise_sampler=noise_sampler, **options)


def _positive(sigmas):
    s = sigmas[sigmas > 0]
    return float(s.min()), float(s.max())


# both integrate from sigma_max to the smallest positive sigma and stop there
@register_sampler("dpm_fast", family="k-diffusion", limit="sigma_min", aliases=("DPM fast",),
                  scheduled=a1111("DPM fast"))
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    noise_sampler=None, eta=0.0):
    """DPM-Solver fast: k-diffusion spends n = steps model calls between the
    schedule's largest and smallest positive sigma (as ComfyUI maps it)."""
    lo, hi = _positive(sigmas)
    return k_sampling().sample_dpm_fast(model, x, lo, hi, len(sigmas) - 1,
                                        extra_args=extra_args, callback=callback,
                                        disable=disable, eta=eta, noise_sampler=noise_sampler)


@register_sampler("dpm_adaptive", family="k-diffusion", limit="sigma_min", nfe_per_step=None,
                  rows_independent=False, aliases=("DPM adaptive",),
                  scheduled=a1111("DPM adaptive"))
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        noise_sampler=None, rtol=0.05, atol=0.0078, order=3, eta=0.0):
    """DPM-Solver adaptive: error-controlled, so the step count only sets sigma_min;
    the NFE it spends is measured (rtol/atol/order via sampler options)."""
    lo, hi = _positive(sigmas)
    return k_sampling().sample_dpm_adaptive(model, x, lo, hi, extra_args=extra_args,
                                            callback=callback, disable=disable,
                                            noise_sampler=noise_sampler, rtol=rtol, atol=atol,
                                            order=order, eta=eta)
