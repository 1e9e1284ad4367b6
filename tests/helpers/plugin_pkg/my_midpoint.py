"""A correct second-order sampler (explicit midpoint in log sigma) and three broken variants,
each with the claims of the correct one, so `convergence check` must name what regressed."""

import torch
from k_diffusion.sampling import to_d

from convergence.core.registries import register_sampler

CLAIMS = {"order": 2, "nfe_per_step": 2, "nfe_offset": -1}


def _midpoint(model, x, sigmas, extra_args, extra_call=False, wrong_last=False, noisy=False):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        d = to_d(x, sigmas[i], model(x, sigmas[i] * s_in, **extra_args))
        if extra_call:
            model(x, sigmas[i] * s_in, **extra_args)
        if sigmas[i + 1] == 0:
            if not wrong_last:
                x = x + d * (sigmas[i + 1] - sigmas[i])
            continue
        s_mid = (sigmas[i] * sigmas[i + 1]) ** 0.5  # midpoint in log sigma
        x_mid = x + d * (s_mid - sigmas[i])
        d_mid = to_d(x_mid, s_mid, model(x_mid, s_mid * s_in, **extra_args))
        x = x + d_mid * (sigmas[i + 1] - sigmas[i])
        if noisy:
            x = x + 1e-3 * torch.randn_like(x)
    return x


@register_sampler("midpoint", **CLAIMS)
@torch.no_grad()
def sample_midpoint(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Explicit midpoint (in log sigma): 2 calls per step, an Euler step to sigma = 0."""
    return _midpoint(model, x, sigmas, extra_args)


@register_sampler("midpoint_extra_call", **CLAIMS)
@torch.no_grad()
def sample_extra_call(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Broken: one model call more per step than claimed."""
    return _midpoint(model, x, sigmas, extra_args, extra_call=True)


@register_sampler("midpoint_wrong_last", **CLAIMS)
@torch.no_grad()
def sample_wrong_last(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Broken: skips the last step, so it stops at sigma_min instead of the limit."""
    return _midpoint(model, x, sigmas, extra_args, wrong_last=True)


@register_sampler("midpoint_noisy", **CLAIMS)
@torch.no_grad()
def sample_noisy(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Broken: draws unseeded noise (torch.randn_like), so the same seed differs."""
    return _midpoint(model, x, sigmas, extra_args, noisy=True)
