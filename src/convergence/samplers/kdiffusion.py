"""k-diffusion's samplers, registered unchanged under their ComfyUI names with the
guide's and A1111's aliases and their claims (order, NFE per step).

Orders are those of the method on a smooth ODE; NFE is ``nfe_per_step * steps +
nfe_offset`` (the 2-stage methods take an Euler step to sigma = 0, one call, hence -1).
Stochastic samplers claim no order (they converge in distribution, not to the ODE's
limit). `convergence check` and benchmarks/sampler_table.py measure both.
"""

from __future__ import annotations

from convergence.samplers import k_sampling
from convergence.samplers.registry import register_sampler

_KARRAS = "karras"


def _reg(name, fn, *, a1111=None, invoke=None, aliases=(), karras=(), **meta):
    """``fn``: a function, or the name of one in ``k_diffusion.sampling`` (imported when a
    sampler first runs: importing k-diffusion takes about a second that `convergence
    analyze`, which resolves sampler names, need not pay). ``invoke``: the InvokeAI 3/4
    scheduler name; its ``_k`` form fixes Karras, as do the names in ``karras``."""
    fn = fn if callable(fn) else f"k_diffusion.sampling:{fn}"
    scheduled = {f"{invoke}_k": _KARRAS} if invoke else {}
    scheduled.update(dict.fromkeys(karras, _KARRAS))
    aliases = (*aliases, invoke) if invoke else aliases
    if a1111:
        scheduled[f"{a1111} Karras"] = _KARRAS
        scheduled[f"{a1111} Exponential"] = "exponential"
        aliases = (*aliases, a1111)
    register_sampler(name, fn, family="k-diffusion", aliases=aliases,
                     scheduled_aliases=scheduled, **meta)


_reg("euler", "sample_euler", aliases=("K_EULER",), a1111="Euler", order=1, invoke="euler",
     description="Euler (1st order, 1 NFE/step)")
_reg("euler_ancestral", "sample_euler_ancestral", stochastic=True,
     aliases=("K_EULER_A",), a1111="Euler a", description="Euler ancestral (stochastic)")
_reg("heun", "sample_heun", aliases=("K_HEUN",), a1111="Heun", order=2, nfe_per_step=2,
     nfe_offset=-1, invoke="heun", description="Heun (2nd order, 2 NFE/step)")
_reg("dpm_2", "sample_dpm_2", aliases=("K_DPM_2",), a1111="DPM2", order=2, nfe_per_step=2,
     nfe_offset=-1, invoke="kdpm_2", description="DPM-2 (2nd order, 2 NFE/step)")
_reg("dpm_2_ancestral", "sample_dpm_2_ancestral", stochastic=True, nfe_per_step=2,
     nfe_offset=-1, aliases=("K_DPM_2_A",), a1111="DPM2 a", invoke="kdpm_2_a",
     description="DPM-2 ancestral (stochastic)")
# linear multistep of order 4, but its first step is an Euler step (local error O(h^2))
# and the next two have orders 2 and 3, so the global error is O(h^2) (measured: README)
_reg("lms", "sample_lms", aliases=("K_LMS",), a1111="LMS", order=2, invoke="lms",
     description="linear multistep, order 4 after a lower-order start")
_reg("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", stochastic=True, nfe_per_step=2,
     nfe_offset=-1, a1111="DPM++ 2S a", description="DPM-Solver++(2S) ancestral (stochastic)")
_reg("dpmpp_sde", "sample_dpmpp_sde", stochastic=True, noise="brownian", nfe_per_step=2,
     nfe_offset=-1, a1111="DPM++ SDE", invoke="dpmpp_sde", aliases=("dpmpp_sde_gpu",),
     description="DPM-Solver++ SDE (stochastic, 2 NFE/step)")
# InvokeAI 2.3 called it k_dpmpp_2 (k_dpmpp_2_karras)
_reg("dpmpp_2m", "sample_dpmpp_2m", a1111="DPM++ 2M", order=2, invoke="dpmpp_2m",
     aliases=("k_dpmpp_2",), karras=("k_dpmpp_2_karras",),
     description="DPM-Solver++(2M) (2nd order multistep)")
# ComfyUI's *_gpu variants draw the same Brownian noise on the GPU: the same method
_reg("dpmpp_2m_sde", "sample_dpmpp_2m_sde", stochastic=True, noise="brownian",
     invoke="dpmpp_2m_sde", aliases=("dpmpp_2m_sde_gpu",), a1111="DPM++ 2M SDE",
     description="DPM-Solver++(2M) SDE (stochastic)")
_reg("dpmpp_3m_sde", "sample_dpmpp_3m_sde", stochastic=True, noise="brownian",
     aliases=("dpmpp_3m_sde_gpu",), a1111="DPM++ 3M SDE",
     description="DPM-Solver++(3M) SDE (stochastic)")


def _positive(sigmas):
    s = sigmas[sigmas > 0]
    return float(s.min()), float(s.max())


def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    noise_sampler=None, eta=0.0):
    """DPM-Solver fast: k-diffusion spends n = steps model calls between the
    schedule's largest and smallest positive sigma (as ComfyUI maps it)."""
    lo, hi = _positive(sigmas)
    return k_sampling().sample_dpm_fast(model, x, lo, hi, len(sigmas) - 1,
                                        extra_args=extra_args, callback=callback,
                                        disable=disable, eta=eta, noise_sampler=noise_sampler)


def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        noise_sampler=None, rtol=0.05, atol=0.0078, order=3, eta=0.0):
    """DPM-Solver adaptive: error-controlled, so the step count only sets sigma_min;
    the NFE it spends is measured (rtol/atol/order via sampler options)."""
    lo, hi = _positive(sigmas)
    return k_sampling().sample_dpm_adaptive(model, x, lo, hi, extra_args=extra_args,
                                            callback=callback, disable=disable,
                                            noise_sampler=noise_sampler, rtol=rtol, atol=atol,
                                            order=order, eta=eta)


# both integrate from sigma_max to the smallest positive sigma and stop there
_reg("dpm_fast", sample_dpm_fast, a1111="DPM fast", limit="sigma_min",
     description="DPM-Solver fast (steps = NFE between the schedule's sigma range)")
_reg("dpm_adaptive", sample_dpm_adaptive, a1111="DPM adaptive", rows_independent=False,
     limit="sigma_min",
     nfe_per_step=None, description="DPM-Solver adaptive (error-controlled; NFE measured)")
