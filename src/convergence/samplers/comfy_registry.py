"""Registers the samplers of :mod:`comfy` with their claims, the way a plug-in would: a
table of plain k-diffusion-signature functions plus metadata, and one adapter onto the
harness's sampler registry.

Claims are what `convergence check` and tests/test_comfy_samplers.py hold each sampler
to: ``order`` is the global order of accuracy on a smooth schedule (Karras) against the
exact limit, ``None`` for stochastic samplers (no pathwise limit to measure against);
``nfe_per_step`` the model calls of a full step; ``nfe_fewer`` how many fewer calls the
cheaper final steps make in all (total = nfe_per_step * steps - nfe_fewer, steps >= 2).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from k_diffusion import sampling as ks

from convergence.samplers import comfy as c
from convergence.samplers.registry import register_sampler


@dataclass(frozen=True)
class Claims:
    order: float | None
    nfe_per_step: int
    nfe_fewer: int = 0
    stochastic: bool = False
    #: which per-cell noise the harness hands a stochastic sampler: "brownian" (SDE
    #: solvers: one Brownian path per cell, so refining the steps refines the same path)
    #: or "gaussian" (ancestral samplers: fresh unit normals per step)
    noise: str | None = None

    def total_nfe(self, steps: int) -> int:
        return self.nfe_per_step * steps - self.nfe_fewer


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable
    claims: Claims
    aliases: tuple[str, ...] = ()
    #: names that also fix the schedule (InvokeAI's ``_k``, A1111's "... Karras")
    scheduled: tuple[tuple[str, str], ...] = ()


def _dpmpp_2m_sde_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                       noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2M) SDE with the Heun-type correction (Lu et al. 2022,
    arXiv:2211.01095, App.; k-diffusion's ``solver_type='heun'``), A1111's "DPM++ 2M SDE Heun"."""
    return ks.sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta,
                                  s_noise, noise_sampler, solver_type="heun")


_ODE1 = Claims(order=1, nfe_per_step=1)
_ODE2 = Claims(order=2, nfe_per_step=1)
_ANCESTRAL = Claims(order=None, nfe_per_step=1, stochastic=True, noise="gaussian")
_SDE = Claims(order=None, nfe_per_step=1, stochastic=True, noise="brownian")

SAMPLERS: tuple[Entry, ...] = (
    Entry("euler_cfg_pp", c.sample_euler_cfg_pp, _ODE1, ("Euler CFG++",)),
    Entry("euler_ancestral_cfg_pp", c.sample_euler_ancestral_cfg_pp, _ANCESTRAL,
          ("Euler a CFG++",)),
    Entry("dpmpp_2m_cfg_pp", c.sample_dpmpp_2m_cfg_pp, _ODE2, ("DPM++ 2M CFG++",)),
    Entry("dpmpp_2s_ancestral_cfg_pp", c.sample_dpmpp_2s_ancestral_cfg_pp,
          Claims(None, 2, 1, True, "gaussian"), ("DPM++ 2S a CFG++",)),
    Entry("ipndm", c.sample_ipndm, _ODE2, ("iPNDM",)),
    Entry("ipndm_v", c.sample_ipndm_v, _ODE2, ("iPNDM_v",)),
    Entry("deis", c.sample_deis, _ODE2, ("DEIS",), (("deis_k", "karras"),)),
    Entry("res_multistep", c.sample_res_multistep, _ODE2, ("RES multistep",)),
    Entry("res_multistep_cfg_pp", c.sample_res_multistep_cfg_pp, _ODE2),
    Entry("res_multistep_ancestral", c.sample_res_multistep_ancestral, _ANCESTRAL),
    Entry("res_multistep_ancestral_cfg_pp", c.sample_res_multistep_ancestral_cfg_pp,
          _ANCESTRAL),
    Entry("gradient_estimation", c.sample_gradient_estimation, _ODE1,
          ("Gradient Estimation",)),
    Entry("gradient_estimation_cfg_pp", c.sample_gradient_estimation_cfg_pp, _ODE1),
    Entry("heunpp2", c.sample_heunpp2, Claims(order=1, nfe_per_step=3, nfe_fewer=3),
          ("heunpp", "Heun++")),
    Entry("er_sde", c.sample_er_sde, _SDE, ("ER-SDE", "ER SDE")),
    Entry("sa_solver", c.sample_sa_solver, _SDE, ("SA-Solver",)),
    Entry("sa_solver_pece", c.sample_sa_solver_pece, Claims(None, 2, 1, True, "brownian"),
          ("SA-Solver PECE",)),
    Entry("seeds_2", c.sample_seeds_2, Claims(None, 2, 1, True, "brownian"), ("SEEDS-2",)),
    Entry("seeds_3", c.sample_seeds_3, Claims(None, 3, 2, True, "brownian"), ("SEEDS-3",)),
    Entry("dpmpp_2m_sde_heun", _dpmpp_2m_sde_heun, _SDE,
          ("DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun_gpu"),
          (("DPM++ 2M SDE Heun Karras", "karras"), ("DPM++ 2M SDE Heun Exponential", "exponential"))),
)


def _positive(sigmas):
    s = sigmas[sigmas > 0]
    return float(s.min()), float(s.max())


def adapt(fn: Callable, claims: Claims) -> Callable:
    """``fn(model, x, sigmas, extra_args, ctx)`` of the harness's registry, calling a
    k-diffusion-signature sampler with this cell's noise and the options it accepts."""
    accepted = set(inspect.signature(fn).parameters)

    def run(model, x, sigmas, extra_args, ctx, callback=None):
        kwargs = {k: v for k, v in ctx.options.items() if k in accepted}
        if claims.noise == "brownian":
            kwargs["noise_sampler"] = ctx.noise.brownian(x, *_positive(sigmas))
        elif claims.noise == "gaussian":
            kwargs["noise_sampler"] = ctx.noise.gaussian(x)
        return fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=True,
                  **kwargs)

    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    return run


def claims_of(name: str) -> Claims:
    return next(e.claims for e in SAMPLERS if e.name == name)


for _e in SAMPLERS:
    register_sampler(_e.name, family="comfyui", stochastic=_e.claims.stochastic,
                     aliases=_e.aliases, scheduled_aliases=dict(_e.scheduled))(
        adapt(_e.fn, _e.claims))
