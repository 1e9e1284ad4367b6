"""k-diffusion's samplers, registered under their ComfyUI names with the guide's and
A1111's aliases. Each adapter only maps our signature onto k-diffusion's."""

from __future__ import annotations

from k_diffusion import sampling as ks

from convergence.samplers.registry import register_sampler

_KARRAS = "karras"


def _positive(sigmas):
    s = sigmas[sigmas > 0]
    return float(s.min()), float(s.max())


def _plain(kfn):
    def run(model, x, sigmas, extra_args, ctx, callback=None):
        return kfn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=True)
    return run


def _ancestral(kfn):
    def run(model, x, sigmas, extra_args, ctx, callback=None):
        return kfn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=True,
                   noise_sampler=ctx.noise.gaussian(x))
    return run


def _brownian(kfn):
    def run(model, x, sigmas, extra_args, ctx, callback=None):
        lo, hi = _positive(sigmas)
        return kfn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=True,
                   noise_sampler=ctx.noise.brownian(x, lo, hi))
    return run


def _reg(name, fn, *, stochastic=False, aliases=(), a1111=None, invoke=None, description="",
         rows_independent=True):
    """``invoke``: the InvokeAI 3/4 scheduler name; its ``_k`` form fixes Karras."""
    scheduled = {f"{invoke}_k": _KARRAS} if invoke else {}
    aliases = (*aliases, invoke) if invoke else aliases
    if a1111:
        scheduled[f"{a1111} Karras"] = _KARRAS
        scheduled[f"{a1111} Exponential"] = "exponential"
        aliases = (*aliases, a1111)
    register_sampler(name, family="k-diffusion", stochastic=stochastic, aliases=aliases,
                     scheduled_aliases=scheduled, description=description,
                     rows_independent=rows_independent)(fn)


_reg("euler", _plain(ks.sample_euler), aliases=("K_EULER",), a1111="Euler", invoke="euler",
     description="Euler (1st order, 1 NFE/step)")
_reg("euler_ancestral", _ancestral(ks.sample_euler_ancestral), stochastic=True,
     aliases=("K_EULER_A",), a1111="Euler a", description="Euler ancestral (stochastic)")
_reg("heun", _plain(ks.sample_heun), aliases=("K_HEUN",), a1111="Heun", invoke="heun",
     description="Heun (2nd order, 2 NFE/step)")
_reg("dpm_2", _plain(ks.sample_dpm_2), aliases=("K_DPM_2",), a1111="DPM2", invoke="kdpm_2",
     description="DPM-2 (2nd order, 2 NFE/step)")
_reg("dpm_2_ancestral", _ancestral(ks.sample_dpm_2_ancestral), stochastic=True,
     aliases=("K_DPM_2_A",), a1111="DPM2 a", invoke="kdpm_2_a", description="DPM-2 ancestral (stochastic)")
_reg("lms", _plain(ks.sample_lms), aliases=("K_LMS",), a1111="LMS", invoke="lms",
     description="linear multistep, order 4")
_reg("dpmpp_2s_ancestral", _ancestral(ks.sample_dpmpp_2s_ancestral), stochastic=True,
     a1111="DPM++ 2S a", description="DPM-Solver++(2S) ancestral (stochastic)")
_reg("dpmpp_sde", _brownian(ks.sample_dpmpp_sde), stochastic=True, a1111="DPM++ SDE",
     invoke="dpmpp_sde", aliases=("dpmpp_sde_gpu",),
     description="DPM-Solver++ SDE (stochastic, 2 NFE/step)")
_reg("dpmpp_2m", _plain(ks.sample_dpmpp_2m), a1111="DPM++ 2M", invoke="dpmpp_2m",
     description="DPM-Solver++(2M) (2nd order multistep)")
# ComfyUI's *_gpu variants draw the same Brownian noise on the GPU: same method, aliases
_reg("dpmpp_2m_sde", _brownian(ks.sample_dpmpp_2m_sde), stochastic=True, a1111="DPM++ 2M SDE",
     invoke="dpmpp_2m_sde", aliases=("dpmpp_2m_sde_gpu",),
     description="DPM-Solver++(2M) SDE (stochastic)")
_reg("dpmpp_3m_sde", _brownian(ks.sample_dpmpp_3m_sde), stochastic=True, a1111="DPM++ 3M SDE",
     aliases=("dpmpp_3m_sde_gpu",),
     description="DPM-Solver++(3M) SDE (stochastic)")


def _dpm_fast(model, x, sigmas, extra_args, ctx, callback=None):
    """DPM-Solver fast: k-diffusion spends n = steps model calls between the
    schedule's largest and smallest positive sigma (as ComfyUI maps it)."""
    lo, hi = _positive(sigmas)
    return ks.sample_dpm_fast(model, x, lo, hi, ctx.steps, extra_args=extra_args,
                              callback=callback, disable=True,
                              noise_sampler=ctx.noise.gaussian(x))


def _dpm_adaptive(model, x, sigmas, extra_args, ctx, callback=None):
    """DPM-Solver adaptive: error-controlled, so the step count only sets sigma_min;
    the NFE it spends is measured (rtol/atol via sampler options)."""
    lo, hi = _positive(sigmas)
    opts = {k: v for k, v in ctx.options.items() if k in ("rtol", "atol", "order")}
    return ks.sample_dpm_adaptive(model, x, lo, hi, extra_args=extra_args, callback=callback,
                                  disable=True, noise_sampler=ctx.noise.gaussian(x), **opts)


_reg("dpm_fast", _dpm_fast, a1111="DPM fast", description=_dpm_fast.__doc__.split("\n")[0])
_reg("dpm_adaptive", _dpm_adaptive, a1111="DPM adaptive", rows_independent=False,
     description="DPM-Solver adaptive (error-controlled; NFE measured)")
