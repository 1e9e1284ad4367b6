"""The ComfyUI samplers that k-diffusion and diffusers lack, computing what ComfyUI's
functions of the same names compute (``comfy/k_diffusion/sampling.py``, ``deis.py``,
``sa_solver.py``), defaults included, written from reading that source and the papers.

Each is a plain function with k-diffusion's signature
``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
**options)``, so it runs on any k-diffusion denoiser; its claims (order, NFE
per step, stochastic) are declared by the decorator right above it, the way a plug-in
registers: ``order`` is the global order of accuracy against the exact limit on a smooth
schedule (Karras); stochastic samplers claim none (no pathwise limit to measure), nor do
those that approach no limit as ComfyUI computes them (ipndm_v; CFG++ at the check's CFG 1,
where ComfyUI renoises with the negative prompt's prediction: docs/samplers.md). NFE is
``nfe_per_step * steps + nfe_offset`` (the cheaper final steps make the offset). Noise:
``brownian`` for SDE solvers (one Brownian path per cell, so finer steps refine the same
path), ``gaussian`` (fresh unit normals per step) for ancestral ones. Where
ComfyUI departs from the paper it cites, the ComfyUI name follows ComfyUI, since that is
what its users run, and a paper variant worth keeping has its own name (``ipndm_v_exact``);
docs/samplers.md lists every difference.

Conventions, ComfyUI's, in the VE (k-diffusion) parametrisation x = x0 + sigma eps, where
ComfyUI's alpha_t is 1 and its half-log-SNR lambda is -log sigma (the maths of
:mod:`integrators`):

- the step to sigma = 0 returns the last denoised prediction D (CFG++: its CFG++ form);
  ComfyUI's deis and heunpp2 take an Euler step there instead, which lands on D up to
  rounding (heunpp2 does here too);
- multistep methods start with lower orders from the points they have;
- CFG++ variants (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance
  for Diffusion Models", arXiv:2406.08070) read the unconditional prediction D_uncond from
  the denoiser's ``post_cfg`` hook. Asking for it makes the harness's
  :class:`GuidedDenoiser` evaluate the negative prompt even at CFG 1, as ComfyUI's
  ``disable_cfg1_optimization`` does for these samplers;
- stochastic ones draw noise only from ``noise_sampler(sigma, sigma_next)`` (unit normal
  per call, or normalised Brownian increments), never from global state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from convergence.core.errors import ConvergenceError
from convergence.core.registries import register_sampler
from convergence.models.vp import sigmas_from_alphas_cumprod
from convergence.samplers import k_sampling
from convergence.samplers.integrators import NoiseScale, adams_sigma_weights, deis_tab_weights

if TYPE_CHECKING:
    from convergence.samplers.spec import SamplingContext

# ---------------------------------------------------------------------------- helpers


def _den(model, x, sigma, extra_args):
    return model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)


def _den_uncond(model, x, sigma, extra_args):
    """(guided D, unconditional D) from one model call, through the ``post_cfg`` hook."""
    got: list[torch.Tensor] = []
    den = model(x, sigma * x.new_ones([x.shape[0]]), **extra_args, post_cfg=got.append)
    return den, (got[-1] if got else den)


def _evaluate(model, x, sigma, extra_args, cfg_pp):
    """(D, D_uncond) for CFG++ samplers; (D, D) for the others."""
    if cfg_pp:
        return _den_uncond(model, x, sigma, extra_args)
    den = _den(model, x, sigma, extra_args)
    return den, den


def _report(callback, x, i, sigma, den):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": den})


def _start(model, x, sigmas, i, extra_args, callback):
    """(sigma, sigma_next, D(x, sigma)) of step i, reported to ``callback``."""
    den = _den(model, x, sigmas[i], extra_args)
    _report(callback, x, i, sigmas[i], den)
    return sigmas[i], sigmas[i + 1], den


def _noise(noise_sampler, x):
    return noise_sampler if noise_sampler is not None else k_sampling().default_noise_sampler(x)


def _renoise(x, noise, sigma, sigma_next, std):
    """Add ``std`` of the step's noise (ancestral sigma_up; none on the step to 0)."""
    return x + noise(sigma, sigma_next) * std if sigma_next > 0 and std > 0 else x


def _ancestral(sigma, sigma_next, eta):
    """k-diffusion's (sigma_down, sigma_up): eta = 0 steps straight to sigma_next."""
    return k_sampling().get_ancestral_step(sigma, sigma_next, eta=eta)


# ------------------------------------------------------ CFG++, DPM-Solver++ and RES


def _res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise,
                   cfg_pp, max_order=2):
    """ComfyUI's res_multistep, shared by its four samplers (and, at ``max_order`` 1, by
    the Euler CFG++ pair): an ancestral split to sigma_down, then

    - a first step, the step to 0 and every step at order 1: Euler,
      x = D + (sigma_down/sigma) (x - D_uncond), with D_uncond = D without CFG++;
    - later steps: RES's 2nd-order multistep (Zhang, Song & Chen 2023, arXiv:2308.02157),
      x = e^-h x + h (b1 D_cur + b2 D_old), h = log(sigma/sigma_down),
      b1 = phi1 - phi2/c2, b2 = phi2/c2 for D linear in lambda, the old point placed at
      c2 h = log(sigma_down_prev/sigma_prev): the previous step's log drop to its own
      sigma_down, which is the distance to the old point only at eta = 0. CFG++ first adds
      the guidance D - D_uncond to x and integrates the unconditional D_uncond, D_old being
      the previous D_uncond;
    - then sigma_up of noise."""
    extra_args = extra_args or {}
    noise = _noise(noise_sampler, x)
    old, old_down = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den, unc = _evaluate(model, x, s, extra_args, cfg_pp)
        _report(callback, x, i, s, den)
        down, up = _ancestral(s, s_next, eta)
        if down == 0 or old is None or max_order == 1:
            x = den + (down / s) * (x - unc)
        else:
            h = math.log(float(s) / float(down))
            c2 = math.log(float(old_down) / float(sigmas[i - 1])) / h
            phi1 = -math.expm1(-h) / h
            phi2 = (1 - phi1) / h
            if cfg_pp:
                x = x + (den - unc)
            x = math.exp(-h) * x + h * (phi1 - phi2 / c2) * unc + h * (phi2 / c2) * old
        x = _renoise(x, noise, s, s_next, up * s_noise)
        old, old_down = unc, down
    return x


@register_sampler("euler_cfg_pp", family="comfyui", limit="none", aliases=("Euler CFG++",))
@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        noise_sampler=None, eta=0.0, s_noise=1.0):
    """Euler with CFG++ (Chung et al. 2024, arXiv:2406.08070, Alg. 1 in k-diffusion form):
    x_next = D + sigma_next (x - D_uncond) / sigma, the step to 0 returning D. ``eta > 0``
    makes it the ancestral variant (k-diffusion's split of sigma_next)."""
    return _res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise,
                          cfg_pp=True, max_order=1)


@register_sampler("euler_ancestral_cfg_pp", family="comfyui", aliases=("Euler a CFG++",), stochastic=True, noise="gaussian")
@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None,
                                  disable=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """Euler ancestral with CFG++ (Chung et al. 2024): to sigma_down renoised with the
    unconditional noise estimate, then sigma_up of noise."""
    return sample_euler_cfg_pp(model, x, sigmas, extra_args, callback, disable, noise_sampler,
                               eta=eta, s_noise=s_noise)


@register_sampler("dpmpp_2m_cfg_pp", family="comfyui", limit="none", aliases=("DPM++ 2M CFG++",))
@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           noise_sampler=None):
    """ComfyUI's DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Alg. 2) with CFG++:
    x_next = D + e^-h (x - D_uncond) - (e^-h - 1) (D - D_uncond,prev) / (2r), r = h_prev/h.
    The multistep difference pairs this step's guided D with the previous step's
    *unconditional* prediction (the paper's 2M differences two data predictions)."""
    extra_args = extra_args or {}
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den, unc = _den_uncond(model, x, s, extra_args)
        _report(callback, x, i, s, den)
        if s_next == 0:
            x = den
            continue
        h = math.log(float(s) / float(s_next))
        x = den + (s_next / s) * (x - unc)
        if old is not None:
            x = x - math.expm1(-h) * (h / (2 * h_last)) * (den - old)
        old, h_last = unc, h
    return x


@register_sampler("dpmpp_2s_ancestral_cfg_pp", family="comfyui", nfe_per_step=2, nfe_offset=-1,
                  aliases=("DPM++ 2S a CFG++",), stochastic=True, noise="gaussian")
@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None,
                                     disable=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """ComfyUI's DPM-Solver++(2S) ancestral with CFG++ (Lu et al. 2022, Alg. 1, r = 1/2):
    a 2S step on the *unconditional* predictions alone (midpoint from D_uncond, end from
    the midpoint's D_uncond) to sigma_down, sigma_up of noise, then the guidance D - D_uncond
    added, so the step to 0 ends at D. 2 NFE/step, 1 on the last."""
    extra_args = extra_args or {}
    noise = _noise(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den, unc = _den_uncond(model, x, s, extra_args)
        _report(callback, x, i, s, den)
        down, up = _ancestral(s, s_next, eta)
        if down == 0:
            x = unc
        else:
            h = math.log(float(s) / float(down))
            s_mid = s * math.exp(-h / 2)
            x_mid = (s_mid / s) * x - math.expm1(-h / 2) * unc
            _, unc_mid = _den_uncond(model, x_mid, s_mid, extra_args)
            x = (down / s) * x - math.expm1(-h) * unc_mid
        x = _renoise(x, noise, s, s_next, up * s_noise) + (den - unc)
    return x


@register_sampler("res_multistep", family="comfyui", order=2, aliases=("RES multistep",))
@torch.no_grad()
def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None,
                         noise_sampler=None, s_noise=1.0):
    """RES multistep, 2nd order (Zhang, Song & Chen 2023, "Improved Order Analysis and
    Design of Exponential Integrator for Diffusion Models Sampling", arXiv:2308.02157):
    the exponential integrator on D, D linear in lambda through the last two points and
    the phi-function weights integrated exactly (ComfyUI's res_multistep, eta = 0)."""
    return _res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, 0.0, s_noise,
                          cfg_pp=False)


@register_sampler("res_multistep_cfg_pp", family="comfyui", limit="none")
@torch.no_grad()
def sample_res_multistep_cfg_pp(model, x, sigmas, extra_args=None, callback=None,
                                disable=None, noise_sampler=None, s_noise=1.0):
    """RES multistep with ComfyUI's CFG++ (see :func:`_res_multistep`)."""
    return _res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, 0.0, s_noise,
                          cfg_pp=True)


@register_sampler("res_multistep_ancestral", family="comfyui", stochastic=True, noise="gaussian")
@torch.no_grad()
def sample_res_multistep_ancestral(model, x, sigmas, extra_args=None, callback=None,
                                   disable=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """RES multistep with ancestral noise (eta = 1), ComfyUI's placement of the old point."""
    return _res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise,
                          cfg_pp=False)


@register_sampler("res_multistep_ancestral_cfg_pp", family="comfyui", stochastic=True, noise="gaussian")
@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None,
                                          disable=None, noise_sampler=None, eta=1.0,
                                          s_noise=1.0):
    """RES multistep ancestral with ComfyUI's CFG++."""
    return _res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise,
                          cfg_pp=True)


# ------------------------------------------------------- Adams–Bashforth in sigma on d

#: fixed Adams–Bashforth coefficients (uniform steps), newest derivative first
_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
       4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}

#: ``weights(i, k) -> [w_0, ..., w_{k-1}]``: step i's weights of its last k derivatives
Weights = Callable[[int, int], list[float]]


def _adams(model, x, sigmas, extra_args, callback, max_order, weights: Weights):
    """x_{i+1} = x_i + sum_j w_j d_{i-j} on d = (x - D)/sigma, newest first, with the
    orders the points allow (Euler first); the step to 0 returns D."""
    extra_args = extra_args or {}
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        s, s_next, den = _start(model, x, sigmas, i, extra_args, callback)
        if s_next == 0:
            x = den
            continue
        ds = [k_sampling().to_d(x, s, den), *ds][:max_order]
        x = x + sum(wj * dj for wj, dj in zip(weights(i, len(ds)), ds, strict=True))
    return x


def _steps(sigmas, i, k) -> list[float]:
    """h_0 = sigma_{i+1} - sigma_i, h_1 = sigma_i - sigma_{i-1}, ... (k of them)."""
    return [float(sigmas[i + 1 - j] - sigmas[i - j]) for j in range(k)]


def ipndm_v_weights(h: list[float]) -> list[float]:
    """ComfyUI's ipndm_v weights for steps ``h`` = (h_0, h_1, ...) newest first (signed
    sigma differences), as written in zju-pi's diff-sampler: order 2 is variable-step
    AB2, (1 + rho/2, -rho/2) with rho = h_0/h_1; order 3 adds T1 (1, -(1 + a), a) with
    a = h_1/h_2, T1 = (1 - h_0^2 / (3 h_1 (h_1 + h_2))) / 2, equal
    to AB3's on uniform steps; order 4 adds T2 (1, -(1 + a + q), (a + q)(1 + b), -q a), with
    b = h_2/h_3, q = h_1 (h_1 + h_2) / (h_2 (h_2 + h_3)), T2 = ((1 - h_0/(3 (h_0 + h_1)))/2
    + (1 - h_0/(2 (h_0 + h_1))) h_0/(6 (h_0 + h_1 + h_2))) h_0 (h_0 + h_1)(h_0 + h_1 + h_2)
    / (h_1 (h_1 + h_2)(h_1 + h_2 + h_3)). On uniform steps order 4 is (57, -65, 54, -11)/24,
    not AB4's (55, -59, 37, -9)/24: its weights sum to 35/24, so order-4 steps are not
    consistent. Returned multiplied by h_0."""
    h0 = h[0]
    if len(h) == 1:
        return [h0]
    rho = h0 / h[1]
    c = [1 + rho / 2, -rho / 2]
    if len(h) >= 3:
        h1, h2 = h[1], h[2]
        a = h1 / h2
        t1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
        c = [c[0] + t1, c[1] - (1 + a) * t1, a * t1]
        if len(h) == 4:
            h3 = h[3]
            q = h1 * (h1 + h2) / (h2 * (h2 + h3))
            t2 = (((1 - h0 / (3 * (h0 + h1))) / 2
                   + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
                  * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3)))
            c = [c[0] + t2, c[1] - (1 + a + q) * t2, c[2] + (a + q) * (1 + h2 / h3) * t2,
                 -q * a * t2]
    return [h0 * cj for cj in c]


@register_sampler("ipndm", family="comfyui", order=2, aliases=("iPNDM",))
@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 noise_sampler=None, max_order=4):
    """iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
    Integrator", arXiv:2204.13902, App. on PNDM): Adams–Bashforth with the FIXED
    uniform-step coefficients (up to 4th order, lower orders while warming up) on
    eps = (x - D)/sigma in sigma. On a non-uniform schedule (Karras) fixed coefficients
    leave an O(h^3) local error, so the global order there is 2."""
    return _adams(model, x, sigmas, extra_args, callback, max_order,
                  lambda i, k: [c * float(sigmas[i + 1] - sigmas[i]) for c in _AB[k]])


@register_sampler("ipndm_v", family="comfyui", limit="none", aliases=("iPNDM_v",))
@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   noise_sampler=None, max_order=4):
    """ComfyUI's ipndm_v: Adams–Bashforth in sigma with the variable-step weights of
    zju-pi's diff-sampler (:func:`ipndm_v_weights`), whose order-4 weights do not sum to
    one: it approaches no limit as steps are refined. The exact variable-step method
    (Zhou et al. 2024, arXiv:2312.00094) is :func:`sample_ipndm_v_exact`."""
    return _adams(model, x, sigmas, extra_args, callback, max_order,
                  lambda i, k: ipndm_v_weights(_steps(sigmas, i, k)))


@register_sampler("ipndm_v_exact", family="comfyui", order=2)
@torch.no_grad()
def sample_ipndm_v_exact(model, x, sigmas, extra_args=None, callback=None, disable=None,
                         noise_sampler=None, max_order=4):
    """iPNDM with exact variable-step coefficients (Zhang & Chen 2023; the variable-step
    form of Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5
    Steps", arXiv:2312.00094): the Lagrange interpolant of eps in sigma through the last
    4 points, integrated exactly over the step. At ``max_order=3`` it is tAB-DEIS in the
    EDM time t = sigma."""
    def weights(i: int, k: int) -> list[float]:
        nodes = [float(v) for v in sigmas[i - k + 1:i + 1].flip(0)]
        return adams_sigma_weights(nodes, float(sigmas[i]), float(sigmas[i + 1]))
    return _adams(model, x, sigmas, extra_args, callback, max_order, weights)


@register_sampler("deis", family="comfyui", order=2, aliases=("DEIS",), scheduled={"deis_k": "karras"})
@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None,
                noise_sampler=None, max_order=3):
    """DEIS, tAB-DEIS (Zhang & Chen 2023, arXiv:2204.13902, Eq. 15) as ComfyUI runs it
    (``deis_mode='tab'``): eps in sigma extrapolated by its Lagrange polynomial in the
    time of a VP SDE fitted to EDM's sigma range, through the last ``max_order`` (3)
    points, with ComfyUI's 10000-point sum for the weights (:func:`deis_tab_weights`)."""
    table = deis_tab_weights([float(v) for v in sigmas], max_order)
    return _adams(model, x, sigmas, extra_args, callback, max_order,
                  lambda i, k: table[i] or [float(sigmas[i + 1] - sigmas[i])])


# ------------------------------------------------------------- gradient estimation


@register_sampler("gradient_estimation", family="comfyui", order=1, aliases=("Gradient Estimation",))
@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None,
                               noise_sampler=None, ge_gamma=2.0, cfg_pp=False):
    """Gradient estimation (Permenter & Yuan 2024, "Interpreting and Improving Diffusion
    Models from an Optimization Perspective", arXiv:2306.04848, Alg. 2) as ComfyUI runs it:
    an Euler step (CFG++: D + sigma_next (x - D_uncond)/sigma) plus
    (gamma - 1)(d - d_prev)(sigma_next - sigma), gamma = 2, where d = (x - D)/sigma (CFG++:
    from D_uncond); the step to 0 returns D. It cancels the denoiser's error rather than
    raising the order: first order."""
    extra_args = extra_args or {}
    d_old = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den, unc = _evaluate(model, x, s, extra_args, cfg_pp)
        _report(callback, x, i, s, den)
        d = k_sampling().to_d(x, s, unc)
        if s_next == 0:
            x = den
            continue
        x = den + d * s_next
        if d_old is not None:
            x = x + (ge_gamma - 1) * (d - d_old) * (s_next - s)
        d_old = d
    return x


@register_sampler("gradient_estimation_cfg_pp", family="comfyui", limit="none")
@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None,
                                      disable=None, noise_sampler=None, ge_gamma=2.0):
    """Gradient estimation (Permenter & Yuan 2024) with ComfyUI's CFG++."""
    return sample_gradient_estimation(model, x, sigmas, extra_args, callback, disable,
                                      ge_gamma=ge_gamma, cfg_pp=True)


# ------------------------------------------------------------------------ Heun++


@register_sampler("heunpp2", family="comfyui", order=1, nfe_per_step=3, nfe_offset=-3, aliases=("heunpp", "Heun++"))
@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   noise_sampler=None):
    """Heun++ "test2" (Carzit, sd-webui-sampler-heunpp, 2023; no paper): an Euler
    predictor chained over this and the next step, the slopes d, d_2 (at sigma_next) and
    d_3 (at sigma_{i+2}) blended with weights sigma_next/(3 sigma_0), sigma_{i+2}/(3
    sigma_0) and the rest on d. The weights shrink with sigma, so it degrades towards
    Euler: first order. 3 NFE/step; the last two steps are Heun (2) and a denoise (1)."""
    extra_args = extra_args or {}
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = _den(model, x, s, extra_args)
        _report(callback, x, i, s, den)
        d = k_sampling().to_d(x, s, den)
        dt = s_next - s
        if s_next == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = k_sampling().to_d(x_2, s_next, _den(model, x_2, s_next, extra_args))
        if i + 2 > n or sigmas[i + 2] == 0:
            w2 = s_next / (2 * sigmas[0])
            x = x + ((1 - w2) * d + w2 * d_2) * dt
            continue
        s_3 = sigmas[i + 2]
        x_3 = x_2 + d_2 * (s_3 - s_next)
        d_3 = k_sampling().to_d(x_3, s_3, _den(model, x_3, s_3, extra_args))
        w2, w3 = s_next / (3 * sigmas[0]), s_3 / (3 * sigmas[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


# ----------------------------------------------------------------- SDE solvers


def _exp_step(x, s, t, hist, scale):
    """x_t = (phi_t/phi_s) x + sum_j b_j D_j for history [(sigma_j, D_j)], newest first,
    D Lagrange in lambda through the history (:meth:`NoiseScale.weights`)."""
    w = scale.weights([sj for sj, _ in hist], s, t)
    return scale.ratio(s, t) * x + sum(wj * dj for wj, (_, dj) in zip(w, hist, strict=True))


def er_sde_noise_scaler(lam: np.ndarray) -> np.ndarray:
    """ER-SDE 5 of Cui et al., the default noise scale function of ComfyUI's er_sde:
    lam (exp(lam^0.3) + 10)."""
    return lam * (np.exp(lam**0.3) + 10.0)


#: points of ComfyUI's er_sde quadrature
_ER_POINTS = 200


def _er_sums(scaler, lam_s: float, lam_t: float) -> tuple[float, float]:
    """ComfyUI's er_sde integrals int 1/phi and int (lam - lam_s)/phi over [lam_t, lam_s]:
    left sums on 200 equal parts, from lam_t."""
    step = (lam_s - lam_t) / _ER_POINTS
    pos = lam_t + np.arange(_ER_POINTS, dtype=np.float64) * step
    phi = scaler(pos)
    return float(np.sum(1 / phi) * step), float(np.sum((pos - lam_s) / phi) * step)


@register_sampler("er_sde", family="comfyui", aliases=("ER-SDE", "ER SDE"), stochastic=True, noise="brownian")
@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                  noise_sampler=None, s_noise=1.0, noise_scaler=None, max_stage=3):
    """ER-SDE-Solver-3 (Cui et al. 2025, "Elucidating the Solution Space of Extended
    Reverse-Time SDE for Diffusion Models", arXiv:2309.06169, Alg. 1) as ComfyUI runs it,
    with lam = sigma and noise scale function phi = ``noise_scaler`` (ER-SDE 5 by default;
    ``lambda s: s`` with ``s_noise=0`` is the ODE): r = phi_t/phi_s, x = r x + (1 - r) D, then the paper's
    Taylor terms (lam_t - lam_s + phi_t S0) D' and ((lam_t - lam_s)^2/2 + phi_t S1) D'' with
    the divided differences D' = (D - D_prev)/(lam_s - lam_prev) and
    D'' = 2 (D' - D'_prev)/(lam_s - lam_prev2), S0, S1 ComfyUI's 200-point sums
    (:func:`_er_sums`), and noise of std sqrt(lam_t^2 - (r lam_s)^2). ``noise_scaler`` is
    applied to float64 numpy arrays."""
    extra_args = extra_args or {}
    scaler = noise_scaler or er_sde_noise_scaler
    noise = _noise(noise_sampler, x)
    old, old_d1 = None, None
    for i in range(len(sigmas) - 1):
        s, s_next, den = _start(model, x, sigmas, i, extra_args, callback)
        if s_next == 0:
            x = den
            continue
        lam_s, lam_t = float(s), float(s_next)
        phi_t = float(scaler(np.float64(lam_t)))
        r = phi_t / float(scaler(np.float64(lam_s)))
        x = r * x + (1 - r) * den
        if min(max_stage, i + 1) >= 2:
            s0, s1 = _er_sums(scaler, lam_s, lam_t)
            dl = lam_t - lam_s
            d1 = (den - old) / (lam_s - float(sigmas[i - 1]))
            x = x + (dl + s0 * phi_t) * d1
            if min(max_stage, i + 1) >= 3:
                d2 = (d1 - old_d1) / ((lam_s - float(sigmas[i - 2])) / 2)
                x = x + (dl * dl / 2 + s1 * phi_t) * d2
            old_d1 = d1
        std = math.sqrt(max(lam_t * lam_t - (r * lam_s) ** 2, 0.0))
        x = _renoise(x, noise, s, s_next, std * s_noise)
        old = den
    return x


def percent_to_sigma(alphas_cumprod: torch.Tensor, percent: float) -> float:
    """ComfyUI's percent_to_sigma of a discrete VP model: the sigma at training time
    t = (1 - percent) 999, log-linear between the table's entries (float64 here)."""
    log_sig = torch.log(sigmas_from_alphas_cumprod(alphas_cumprod.to(torch.float64).cpu()))
    t = min(max((1 - percent) * 999.0, 0.0), len(log_sig) - 1)
    lo = math.floor(t)
    hi = min(lo + 1, len(log_sig) - 1)
    return math.exp((1 - (t - lo)) * float(log_sig[lo]) + (t - lo) * float(log_sig[hi]))


def sa_solver_tau(context: SamplingContext | None, eta: float = 1.0) -> Callable[[float], float]:
    """ComfyUI's default SA-Solver stochasticity: tau = eta for percent_to_sigma(0.2) >=
    sigma >= percent_to_sigma(0.8) (SD's schedule: 5.09 >= sigma >= 0.571), else 0 (ODE)."""
    if eta <= 0:
        return lambda sigma: 0.0
    ac = getattr(context, "alphas_cumprod", None)
    if ac is None:
        raise ConvergenceError("sa_solver: ComfyUI's default tau window (sigmas between 20 % and "
                               "80 % of the model's training timesteps) needs the model's "
                               "discrete schedule, and this model has none; pass eta=0 or tau_func")
    hi, lo = percent_to_sigma(ac, 0.2), percent_to_sigma(ac, 0.8)
    return lambda sigma: eta if lo <= float(sigma) <= hi else 0.0


@register_sampler("sa_solver", family="comfyui", aliases=("SA-Solver",), stochastic=True, noise="brownian")
@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     noise_sampler=None, eta=1.0, s_noise=1.0, predictor_order=3,
                     corrector_order=4, use_pece=False, tau_func=None, context=None):
    """SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling
    of Diffusion Models", arXiv:2309.05019, Alg. 1, data prediction) as ComfyUI runs it:
    stochastic Adams–Bashforth predictor and Adams–Moulton corrector on D in lambda for the
    SDE with phi = sigma^(1 + tau^2), tau = ``tau_func(sigma_next)`` (default
    :func:`sa_solver_tau`: ``eta`` inside ComfyUI's window, 0 outside); the corrector of
    step i reuses step i-1's tau and noise. PEC (1 NFE/step): the evaluation at the
    predicted point serves the correction and the next prediction; ``use_pece`` re-evaluates
    at the corrected point (2 NFE/step, the last step corrected too). When the sigmas end
    at 0 the orders fall at the end: the predictor to at most n - 1 - i (the step to
    sigma_min is an exponential Euler step), the corrector to at most n - i; the step to 0
    returns the (un-corrected, in PEC) D."""
    extra_args = extra_args or {}
    tau = tau_func or sa_solver_tau(context, eta)
    noise = _noise(noise_sampler, x)
    n = len(sigmas) - 1
    lower_at_end = float(sigmas[-1]) == 0
    hist: list[tuple[float, torch.Tensor]] = []   # (sigma, D), newest first
    x_pred, tau_t, added = x, 0.0, None
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = _den(model, x_pred, s, extra_args)
        _report(callback, x_pred, i, s, den)
        hist = [(float(s), den), *hist][:max(predictor_order, corrector_order)]
        p = min(predictor_order, len(hist))
        c = 0 if i == 0 or (s_next == 0 and not use_pece) else min(corrector_order, len(hist))
        if lower_at_end:
            p, c = min(p, n - 1 - i), min(c, n - i)
        if c == 0:
            x = x_pred
        else:
            x = _exp_step(x, float(sigmas[i - 1]), float(s), hist[:c], NoiseScale.power(1 + tau_t**2))
            x = x if added is None else x + added
            if use_pece:
                den = _den(model, x, s, extra_args)
                hist[0] = (float(s), den)
        if s_next == 0:
            x_pred = den
            continue
        tau_t = tau(s_next)
        scale = NoiseScale.power(1 + tau_t**2)
        x_pred = _exp_step(x, float(s), float(s_next), hist[:p], scale)
        std = scale.noise_std(float(s), float(s_next)) * s_noise
        added = noise(s, s_next) * std if tau_t > 0 and s_noise > 0 else None
        x_pred = x_pred if added is None else x_pred + added
    return x_pred


@register_sampler("sa_solver_pece", family="comfyui", nfe_per_step=2, nfe_offset=-1,
                  aliases=("SA-Solver PECE",), stochastic=True, noise="brownian")
@torch.no_grad()
def sample_sa_solver_pece(model, x, sigmas, extra_args=None, callback=None, disable=None,
                          noise_sampler=None, eta=1.0, s_noise=1.0, predictor_order=3,
                          corrector_order=4, tau_func=None, context=None):
    """SA-Solver in PECE mode (Xue et al. 2023): re-evaluates at the corrected point."""
    return sample_sa_solver(model, x, sigmas, extra_args, callback, disable, noise_sampler,
                            eta, s_noise, predictor_order, corrector_order, use_pece=True,
                            tau_func=tau_func, context=context)


def _seeds(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, rs,
           solver_type="phi_2"):
    """One exponential Runge–Kutta step per interval of the SDE with phi = sigma^(1 + eta)
    (ComfyUI's parametrisation), stages at lambda_s + r h for r in ``rs``; each stage and
    the end use D_s and the latest stage's D, linear in lambda (``phi_2``), or, for one
    stage and ``phi_1``, D_s + (D_stage - D_s)/(2r) as a constant over the step. The noise
    of every stage is the exact step's noise, composed along the stages so that all of
    them lie on one Brownian path: N(s->b) = (phi_b/phi_a) N(s->a) + N(a->b)."""
    if solver_type not in ("phi_1", "phi_2"):
        raise ConvergenceError(f"solver_type must be 'phi_1' or 'phi_2', not {solver_type!r}")
    extra_args = extra_args or {}
    scale = NoiseScale.power(1 + eta)
    noise = _noise(noise_sampler, x)
    # no noise at all at eta = 0 (the ODE), not the square root of a rounding error
    s_noise = s_noise if eta > 0 else 0.0
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        den = _den(model, x, sigmas[i], extra_args)
        _report(callback, x, i, sigmas[i], den)
        if s_next == 0:
            x = den
            continue
        h = math.log(s / s_next)
        targets = [s * math.exp(-r * h) for r in rs] + [s_next]
        last = [(s, den)]
        a, acc = s, torch.zeros_like(x)   # acc = N(s -> a)
        for j, b in enumerate(targets):
            acc = _renoise(scale.ratio(a, b) * acc, noise, a, b, scale.noise_std(a, b) * s_noise)
            if j == len(rs) and solver_type == "phi_1":
                last = [(s, den + (last[0][1] - den) / (2 * rs[0]))]
            x_b = _exp_step(x, s, b, last, scale) + acc
            if j < len(rs):
                last = [(b, _den(model, x_b, sigmas.new_tensor(b), extra_args)), (s, den)]
            a = b
        x = x_b
    return x


@register_sampler("seeds_2", family="comfyui", nfe_per_step=2, nfe_offset=-1, aliases=("SEEDS-2",), stochastic=True, noise="brownian")
@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   noise_sampler=None, eta=1.0, s_noise=1.0, r=0.5, solver_type="phi_1"):
    """SEEDS-2 (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast
    High-Quality Sampling from Diffusion Models", arXiv:2305.14267, data prediction) as
    ComfyUI runs it: a two-stage exponential SDE solver, stage at lambda_s + r h, for the
    SDE with phi = sigma^(1 + eta); ComfyUI's default ``phi_1`` ends with the stage's D
    (at r = 1/2) under the first-order weight, ``phi_2`` with D linear in lambda.
    2 NFE/step (1 on the last); eta = 0 is an ODE solver of order 2."""
    return _seeds(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, (r,),
                  solver_type)


@register_sampler("seeds_3", family="comfyui", nfe_per_step=3, nfe_offset=-2, aliases=("SEEDS-3",), stochastic=True, noise="brownian")
@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   noise_sampler=None, eta=1.0, s_noise=1.0, r_1=1 / 3, r_2=2 / 3):
    """SEEDS-3 (Gonzalez et al. 2023, arXiv:2305.14267): three stages at r = 1/3, 2/3,
    each using D_s and the previous stage (the DPM-Solver-3 tableau), phi = sigma^(1 + eta).
    3 NFE/step (1 on the last); eta = 0 is DPM-Solver-3 (order 3)."""
    return _seeds(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise,
                  (r_1, r_2))


@register_sampler("dpmpp_2m_sde_heun", family="comfyui", stochastic=True, noise="brownian",
                  aliases=("DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun_gpu"),
                  scheduled={"DPM++ 2M SDE Heun Karras": "karras",
                             "DPM++ 2M SDE Heun Exponential": "exponential"})
def sample_dpmpp_2m_sde_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                             noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2M) SDE with the Heun-type correction (Lu et al. 2022,
    arXiv:2211.01095, App.; k-diffusion's ``solver_type='heun'``): A1111's "DPM++ 2M SDE Heun"."""
    return k_sampling().sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable,
                                            eta, s_noise, noise_sampler, solver_type="heun")
