"""The original CompVis samplers of the guide, DDIM (eta = 0) and PLMS, written in the
k-diffusion parameterisation: x is the scaled sample x_t / sqrt(ā_t) and
eps = (x - D(x, sigma)) / sigma. A DDIM step keeps the predicted x0 and eps:
x_next = x + (sigma_next - sigma) * eps. Their native schedule is ``ddim_uniform``
(CompVis timesteps 1, 1+c, 1+2c, …, ending at ā_0, not at sigma = 0)."""

from __future__ import annotations

import torch

from convergence.samplers.registry import register_sampler


def _eps(model, x, sigma, extra_args):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    return (x - model(x, sigma * s_in, **extra_args)) / sigma


@register_sampler("ddim", family="compvis", native_schedule="ddim_uniform",
                  aliases=("DDIM",), order=1)
@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DDIM, deterministic (eta = 0): 1 NFE/step."""
    for i in range(len(sigmas) - 1):
        eps = _eps(model, x, sigmas[i], extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i]})
        x = x + (sigmas[i + 1] - sigmas[i]) * eps
    return x


# 4th-order Adams-Bashforth steps, but on a schedule that ends at sigma = 0 the last step
# extrapolates eps to sigma = 0 instead of denoising: first order against either exact
# limit (measured on `convergence check`: 1.09 over 32-128 steps on Karras)
@register_sampler("plms", family="compvis", native_schedule="ddim_uniform",
                  aliases=("PLMS", "pndm_plms"), order=1, nfe_offset=1)
@torch.no_grad()
def sample_plms(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """PLMS (pseudo linear multistep, CompVis): 4th-order Adams-Bashforth on eps with a
    2nd-order first step that costs one extra model call (NFE = steps + 1)."""
    old_eps: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        eps = _eps(model, x, sigma, extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma})
        if not old_eps:
            if sigma_next > 0:
                x_pred = x + (sigma_next - sigma) * eps
                eps_prime = (eps + _eps(model, x_pred, sigma_next, extra_args)) / 2
            else:
                eps_prime = eps
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = x + (sigma_next - sigma) * eps_prime
        old_eps.append(eps)
    return x
