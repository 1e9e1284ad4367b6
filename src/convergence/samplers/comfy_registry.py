"""Registers the samplers of :mod:`comfy` with their claims the way a plug-in does:
plain k-diffusion-signature functions handed to :func:`register_sampler` with metadata
(the harness passes each its cell's noise sampler and the options it accepts).

The claims are what `convergence check` and tests/test_comfy_samplers.py hold each
sampler to: ``order`` is the global order of accuracy against the exact limit on a smooth
schedule (Karras); stochastic samplers claim none (no pathwise limit to measure), nor do
those that approach no limit as ComfyUI computes them (ipndm_v; CFG++ at the check's CFG 1,
where ComfyUI renoises with the negative prompt's prediction: docs/samplers.md). NFE is
``nfe_per_step * steps + nfe_offset`` (the cheaper final steps make the offset). Noise:
``brownian`` for SDE solvers (one Brownian path per cell, so finer steps refine the same
path), ``gaussian`` (fresh unit normals per step) for ancestral ones.
"""

from __future__ import annotations

from convergence.samplers import comfy as c
from convergence.samplers import k_sampling
from convergence.samplers.registry import register_sampler

_KARRAS = "karras"


def _reg(name, fn, *, aliases=(), scheduled=None, **claims):
    register_sampler(name, fn, family="comfyui", aliases=aliases,
                     scheduled_aliases=scheduled or {}, **claims)


def sample_dpmpp_2m_sde_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                             noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2M) SDE with the Heun-type correction (Lu et al. 2022,
    arXiv:2211.01095, App.; k-diffusion's ``solver_type='heun'``): A1111's "DPM++ 2M SDE Heun"."""
    return k_sampling().sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable,
                                            eta, s_noise, noise_sampler, solver_type="heun")


_ANCESTRAL = {"stochastic": True, "noise": "gaussian"}
_SDE = {"stochastic": True, "noise": "brownian"}

_reg("euler_cfg_pp", c.sample_euler_cfg_pp, aliases=("Euler CFG++",))
_reg("euler_ancestral_cfg_pp", c.sample_euler_ancestral_cfg_pp, aliases=("Euler a CFG++",),
     **_ANCESTRAL)
_reg("dpmpp_2m_cfg_pp", c.sample_dpmpp_2m_cfg_pp, aliases=("DPM++ 2M CFG++",))
_reg("dpmpp_2s_ancestral_cfg_pp", c.sample_dpmpp_2s_ancestral_cfg_pp, nfe_per_step=2,
     nfe_offset=-1, aliases=("DPM++ 2S a CFG++",), **_ANCESTRAL)
# Adams methods in sigma of nominal order 4 / 3: their Euler first step's O(h^2) error is
# never damped, so the global order is 2 (approached from above: docs/samplers.md);
# ComfyUI's ipndm_v has inconsistent order-4 weights and approaches no limit
_reg("ipndm", c.sample_ipndm, order=2, aliases=("iPNDM",))
_reg("ipndm_v", c.sample_ipndm_v, aliases=("iPNDM_v",))
_reg("ipndm_v_exact", c.sample_ipndm_v_exact, order=2)
# InvokeAI's deis / deis_k are diffusers' DEIS; here they are this DEIS (the diffusers one
# is DEISMultistepScheduler, swapped in by model.sampler_backend=diffusers)
_reg("deis", c.sample_deis, order=2, aliases=("DEIS",), scheduled={"deis_k": _KARRAS})
_reg("res_multistep", c.sample_res_multistep, order=2, aliases=("RES multistep",))
_reg("res_multistep_cfg_pp", c.sample_res_multistep_cfg_pp)
_reg("res_multistep_ancestral", c.sample_res_multistep_ancestral, **_ANCESTRAL)
_reg("res_multistep_ancestral_cfg_pp", c.sample_res_multistep_ancestral_cfg_pp, **_ANCESTRAL)
_reg("gradient_estimation", c.sample_gradient_estimation, order=1,
     aliases=("Gradient Estimation",))
_reg("gradient_estimation_cfg_pp", c.sample_gradient_estimation_cfg_pp)
_reg("heunpp2", c.sample_heunpp2, order=1, nfe_per_step=3, nfe_offset=-3,
     aliases=("heunpp", "Heun++"))
_reg("er_sde", c.sample_er_sde, aliases=("ER-SDE", "ER SDE"), **_SDE)
_reg("sa_solver", c.sample_sa_solver, aliases=("SA-Solver",), **_SDE)
_reg("sa_solver_pece", c.sample_sa_solver_pece, nfe_per_step=2, nfe_offset=-1,
     aliases=("SA-Solver PECE",), **_SDE)
_reg("seeds_2", c.sample_seeds_2, nfe_per_step=2, nfe_offset=-1, aliases=("SEEDS-2",), **_SDE)
_reg("seeds_3", c.sample_seeds_3, nfe_per_step=3, nfe_offset=-2, aliases=("SEEDS-3",), **_SDE)
_reg("dpmpp_2m_sde_heun", sample_dpmpp_2m_sde_heun, aliases=("DPM++ 2M SDE Heun",
                                                             "dpmpp_2m_sde_heun_gpu"),
     scheduled={"DPM++ 2M SDE Heun Karras": _KARRAS,
                "DPM++ 2M SDE Heun Exponential": "exponential"}, **_SDE)
