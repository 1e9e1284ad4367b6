"""Today's ComfyUI samplers that k-diffusion and diffusers lack, written from their papers.

Each is a plain function with k-diffusion's signature
``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
**options)``, so it runs on any k-diffusion denoiser, registered with its claims right
above it the way a plug-in registers. The claims are what `convergence check` and
tests/unit/test_comfy_samplers.py hold each sampler to: ``order`` is the global order of
accuracy against the exact limit on a smooth schedule (Karras); stochastic samplers claim
none (no pathwise limit to measure). NFE is ``nfe_per_step * steps + nfe_offset`` (the
cheaper final steps make the offset). Noise: ``brownian`` for SDE solvers (one Brownian
path per cell, so finer steps refine the same path), ``gaussian`` (fresh unit normals per
step) for ancestral ones.

Conventions shared by all of them (the maths lives in :mod:`integrators`):

- the step to sigma = 0 returns the last data prediction D, as DPM-Solver++ does (there
  h = log(sigma/0) is infinite and every exponential or polynomial extrapolation degenerates),
  so the deterministic ones converge to D(x(sigma_min)), the exact limit ``exact-denoised``;
- multistep methods start with lower orders from the points they have;
- CFG++ variants (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance
  for Diffusion Models", arXiv:2406.08070) keep the guided data prediction but renoise
  with the unconditional noise estimate; for any step whose first-order part is
  ``D + (sigma_target/sigma) (x - D)`` that adds ``(sigma_target/sigma) (D - D_uncond)``
  (:func:`_cfg_pp`). They need a denoiser that accepts ``post_cfg`` (the harness's
  :class:`GuidedDenoiser` does); at CFG 1 they equal their base sampler.
- stochastic ones draw noise only from ``noise_sampler(sigma, sigma_next)`` (unit
  normal per call, or normalised Brownian increments), never from global state.
"""

from __future__ import annotations

import math

import torch

from convergence.core.registries import register_sampler
from convergence.samplers import k_sampling
from convergence.samplers.integrators import NoiseScale, adams_sigma_weights, identity

# ---------------------------------------------------------------------------- helpers


def _den(model, x, sigma, extra_args):
    return model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)


def _den_uncond(model, x, sigma, extra_args):
    """(guided D, unconditional D) from one model call, through the ``post_cfg`` hook."""
    got: list[torch.Tensor] = []
    den = model(x, sigma * x.new_ones([x.shape[0]]), **extra_args, post_cfg=got.append)
    return den, (got[-1] if got else den)


def _evaluate(model, x, sigma, extra_args, cfg_pp):
    if cfg_pp:
        return _den_uncond(model, x, sigma, extra_args)
    den = _den(model, x, sigma, extra_args)
    return den, den


def _cfg_pp(x_next, sigma, sigma_target, den, uncond):
    """CFG++: renoise with the unconditional noise estimate (see the module docstring)."""
    return x_next + (sigma_target / sigma) * (den - uncond)


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


# ------------------------------------------------------------- Euler-type, CFG++ family


@register_sampler("euler_cfg_pp", family="comfyui", order=1, aliases=("Euler CFG++",))
@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        noise_sampler=None, eta=0.0, s_noise=1.0):
    """Euler with CFG++ (Chung et al. 2024, arXiv:2406.08070, Alg. 1 in k-diffusion form):
    x_next = D_guided + sigma_next * (x - D_uncond) / sigma. ``eta > 0`` makes it the
    ancestral variant (k-diffusion's get_ancestral_step splits sigma_next). It is the
    first-order exponential step (DDIM) with CFG++ renoising."""
    return _exp_multistep(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise,
                          cfg_pp=True, order=1)


@register_sampler("euler_ancestral_cfg_pp", family="comfyui", aliases=("Euler a CFG++",), stochastic=True, noise="gaussian")
@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None,
                                  disable=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """Euler ancestral with CFG++ (Chung et al. 2024): the ancestral step of Ho et al. 2020
    / k-diffusion, renoising to sigma_down with the unconditional noise estimate."""
    return sample_euler_cfg_pp(model, x, sigmas, extra_args, callback, disable, noise_sampler,
                               eta=eta, s_noise=s_noise)


@register_sampler("dpmpp_2m_cfg_pp", family="comfyui", order=2, aliases=("DPM++ 2M CFG++",))
@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           noise_sampler=None):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Alg. 2) with CFG++ renoising:
    x_next = e^-h (x - D_uncond) + D + (1 - e^-h) (D - D_prev) / (2r), r = h_prev / h."""
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
        x = (s_next / s) * (x - unc) + den
        if old is not None:
            x = x - math.expm1(-h) * (den - old) / (2 * h_last / h)
        old, h_last = den, h
    return x


@register_sampler("dpmpp_2s_ancestral_cfg_pp", family="comfyui", nfe_per_step=2, nfe_offset=-1,
                  aliases=("DPM++ 2S a CFG++",), stochastic=True, noise="gaussian")
@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None,
                                     disable=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S) (Lu et al. 2022, arXiv:2211.01095, Alg. 1, r = 1/2) ancestral, with
    CFG++ renoising at the midpoint and at sigma_down. 2 NFE/step, 1 on the last."""
    extra_args = extra_args or {}
    noise = _noise(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den, unc = _den_uncond(model, x, s, extra_args)
        _report(callback, x, i, s, den)
        down, up = k_sampling().get_ancestral_step(s, s_next, eta=eta)
        if down == 0:
            x = den
            continue
        h = math.log(float(s) / float(down))
        s_mid = s * math.exp(-h / 2)
        x_mid = _cfg_pp((s_mid / s) * x - math.expm1(-h / 2) * den, s, s_mid, den, unc)
        den_mid = _den(model, x_mid, s_mid, extra_args)
        x = _cfg_pp((down / s) * x - math.expm1(-h) * den_mid, s, down, den, unc)
        x = _renoise(x, noise, s, s_next, up * s_noise)
    return x


# ------------------------------------------------------- Adams–Bashforth in sigma on d

#: fixed Adams–Bashforth coefficients (uniform steps), newest derivative first
_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
       4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _adams(model, x, sigmas, extra_args, callback, max_order, variable):
    extra_args = extra_args or {}
    ds: list[torch.Tensor] = []     # newest first
    for i in range(len(sigmas) - 1):
        s, s_next, den = _start(model, x, sigmas, i, extra_args, callback)
        if s_next == 0:
            x = den
            continue
        ds = [k_sampling().to_d(x, s, den), *ds][:max_order]
        if variable:
            nodes = [float(v) for v in sigmas[i - len(ds) + 1:i + 1].flip(0)]
            w = adams_sigma_weights(nodes, float(s), float(s_next))
        else:
            w = [c * float(s_next - s) for c in _AB[len(ds)]]
        x = x + sum(wj * dj for wj, dj in zip(w, ds, strict=True))
    return x


# Adams methods in sigma of nominal order 4 / 3: their Euler first step's O(h^2) error is
# never damped, so the global order is 2 (approached from above: docs/samplers.md)
@register_sampler("ipndm", family="comfyui", order=2, aliases=("iPNDM",))
@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 noise_sampler=None, max_order=4):
    """iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
    Integrator", arXiv:2204.13902, App. on PNDM): Adams–Bashforth with the FIXED
    uniform-step coefficients (up to 4th order, lower orders while warming up) on
    eps = (x - D)/sigma in sigma. On a non-uniform schedule (Karras) fixed coefficients
    leave an O(h^3) local error, so the global order there is 2."""
    return _adams(model, x, sigmas, extra_args, callback, max_order, variable=False)


@register_sampler("ipndm_v", family="comfyui", order=2, aliases=("iPNDM_v",))
@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   noise_sampler=None, max_order=4):
    """iPNDM with variable-step coefficients (Zhang & Chen 2023; the variable-step form
    of Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5
    Steps", arXiv:2312.00094): the Lagrange interpolant of eps through the last 4
    points, integrated exactly over the step."""
    return _adams(model, x, sigmas, extra_args, callback, max_order, variable=True)


# InvokeAI's deis / deis_k are diffusers' DEIS; here they are this DEIS (the diffusers one
# is DEISMultistepScheduler, swapped in by model.sampler_backend=diffusers)
@register_sampler("deis", family="comfyui", order=2, aliases=("DEIS",), scheduled={"deis_k": "karras"},
                  diffusers="DEISMultistepScheduler")
@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None,
                noise_sampler=None, max_order=3):
    """DEIS, tAB-DEIS (Zhang & Chen 2023, arXiv:2204.13902, Eq. 15) in the EDM time t =
    sigma, where the exponential integrator of the eps-ODE dx/dsigma = eps has a unit
    transfer coefficient: eps extrapolated by its Lagrange polynomial through the last
    ``max_order`` (3) points and integrated exactly."""
    return _adams(model, x, sigmas, extra_args, callback, max_order, variable=True)


# --------------------------------------------- exponential integrators on D (lambda)


def _exp_step(x, s, t, hist, scale, coord=None):
    """x_t = (phi_t/phi_s) x + sum_j b_j D_j for history [(sigma_j, D_j)], newest first."""
    nodes = [sj for sj, _ in hist]
    w = scale.weights(nodes, s, t) if coord is None else scale.weights(nodes, s, t, coord)
    return scale.ratio(s, t) * x + sum(wj * dj for wj, (_, dj) in zip(w, hist, strict=True))


_ODE = NoiseScale.power(1.0)


@register_sampler("res_multistep", family="comfyui", order=2, aliases=("RES multistep",))
@torch.no_grad()
def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None,
                         noise_sampler=None, eta=0.0, s_noise=1.0, cfg_pp=False):
    """RES multistep, 2nd order (Zhang, Song & Chen 2023, "Improved Order Analysis and
    Design of Exponential Integrator for Diffusion Models Sampling", arXiv:2308.02157):
    the exponential integrator on D with D linear in lambda through the last two
    points and the phi-function weights integrated exactly, which satisfies the order
    conditions DPM-Solver++(2M)'s approximate weights miss. ``eta > 0``: ancestral
    (steps to sigma_down, then adds sigma_up noise); ``cfg_pp``: CFG++ renoising."""
    return _exp_multistep(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise,
                          cfg_pp, order=2)


def _exp_multistep(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise,
                   cfg_pp, order):
    """Exponential integrator on D, Lagrange in lambda through the last ``order`` points,
    to sigma_down, then sigma_up of noise (ancestral split of k-diffusion)."""
    extra_args = extra_args or {}
    hist: list[tuple[float, torch.Tensor]] = []
    noise = _noise(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den, unc = _evaluate(model, x, s, extra_args, cfg_pp)
        _report(callback, x, i, s, den)
        down, up = k_sampling().get_ancestral_step(s, s_next, eta=eta)
        if down == 0:
            x = den
            continue
        hist = [(float(s), den), *hist][:order]
        x = _cfg_pp(_exp_step(x, float(s), float(down), hist, _ODE), s, down, den, unc)
        x = _renoise(x, noise, s, s_next, up * s_noise)
    return x


@register_sampler("res_multistep_cfg_pp", family="comfyui", order=2)
@torch.no_grad()
def sample_res_multistep_cfg_pp(model, x, sigmas, extra_args=None, callback=None,
                                disable=None, noise_sampler=None):
    """RES multistep (Zhang et al. 2023) with CFG++ renoising (Chung et al. 2024)."""
    return sample_res_multistep(model, x, sigmas, extra_args, callback, disable, cfg_pp=True)


@register_sampler("res_multistep_ancestral", family="comfyui", stochastic=True, noise="gaussian")
@torch.no_grad()
def sample_res_multistep_ancestral(model, x, sigmas, extra_args=None, callback=None,
                                   disable=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """RES multistep (Zhang et al. 2023) with ancestral noise (eta = 1)."""
    return sample_res_multistep(model, x, sigmas, extra_args, callback, disable, noise_sampler,
                                eta=eta, s_noise=s_noise)


@register_sampler("res_multistep_ancestral_cfg_pp", family="comfyui", stochastic=True, noise="gaussian")
@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None,
                                          disable=None, noise_sampler=None, eta=1.0,
                                          s_noise=1.0):
    """RES multistep ancestral (Zhang et al. 2023) with CFG++ (Chung et al. 2024)."""
    return sample_res_multistep(model, x, sigmas, extra_args, callback, disable, noise_sampler,
                                eta=eta, s_noise=s_noise, cfg_pp=True)


# ------------------------------------------------------------- gradient estimation


@register_sampler("gradient_estimation", family="comfyui", order=1, aliases=("Gradient Estimation",))
@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None,
                               noise_sampler=None, ge_gamma=2.0, cfg_pp=False):
    """Gradient estimation (Permenter & Yuan 2024, "Interpreting and Improving Diffusion
    Models from an Optimization Perspective", arXiv:2306.04848, Alg. 2): an Euler step on
    d_bar = gamma d_i + (1 - gamma) d_{i-1}, gamma = 2, which cancels the denoiser's
    error rather than raising the order: first order."""
    extra_args = extra_args or {}
    d_old = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den, unc = _evaluate(model, x, s, extra_args, cfg_pp)
        _report(callback, x, i, s, den)
        d = k_sampling().to_d(x, s, den)
        d_bar = d if d_old is None else ge_gamma * d + (1 - ge_gamma) * d_old
        x = _cfg_pp(x + d_bar * (s_next - s), s, s_next, den, unc)
        d_old = d
    return x


@register_sampler("gradient_estimation_cfg_pp", family="comfyui", order=1)
@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None,
                                      disable=None, noise_sampler=None, ge_gamma=2.0):
    """Gradient estimation (Permenter & Yuan 2024) with CFG++ renoising (Chung et al. 2024)."""
    return sample_gradient_estimation(model, x, sigmas, extra_args, callback, disable,
                                      ge_gamma=ge_gamma, cfg_pp=True)


# ------------------------------------------------------------------------ Heun++


@register_sampler("heunpp2", family="comfyui", order=1, nfe_per_step=3, nfe_offset=-3,
                  aliases=("heunpp", "Heun++"))
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


@register_sampler("er_sde", family="comfyui", aliases=("ER-SDE", "ER SDE"), stochastic=True, noise="brownian")
@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                  noise_sampler=None, s_noise=1.0, max_stage=3, noise_scale=None):
    """ER-SDE-Solver-3 (Cui et al. 2025, "Elucidating the Solution Space of Extended
    Reverse-Time SDE for Diffusion Models", arXiv:2309.06169, Eq. 21 / Alg. 1, VE form):
    the exact linear part phi_t/phi_s of the ER SDE with the noise scale function
    ER-SDE 5, phi(s) = s (exp(s^0.3) + 10), D expanded in sigma (the paper's lambda = sigma
    for VE) through the last ``max_stage`` points, and noise of variance
    sigma_t^2 - (phi_t sigma_s / phi_s)^2. ``noise_scale`` may be any
    :class:`NoiseScale` (``NoiseScale.power(1)`` is the ODE, a 3rd-order multistep solver)."""
    extra_args = extra_args or {}
    scale = noise_scale or NoiseScale.er_sde_5()
    hist: list[tuple[float, torch.Tensor]] = []
    noise = _noise(noise_sampler, x)
    for i in range(len(sigmas) - 1):
        s, s_next, den = _start(model, x, sigmas, i, extra_args, callback)
        if s_next == 0:
            x = den
            continue
        hist = [(float(s), den), *hist][:max_stage]
        x = _exp_step(x, float(s), float(s_next), hist, scale, coord=identity)
        std = scale.noise_std(float(s), float(s_next)) * s_noise
        x = _renoise(x, noise, s, s_next, std)
    return x


@register_sampler("sa_solver", family="comfyui", aliases=("SA-Solver",), stochastic=True, noise="brownian")
@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     noise_sampler=None, eta=1.0, s_noise=1.0, predictor_order=3,
                     corrector_order=4, pece=False):
    """SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling
    of Diffusion Models", arXiv:2309.05019, Alg. 1, data prediction, VE): stochastic
    Adams–Bashforth predictor and Adams–Moulton corrector on D in lambda for the SDE
    with tau = ``eta`` (phi = sigma^(1+tau^2)); the corrector reuses the predictor's
    noise. PEC (1 NFE/step): the evaluation at the predicted point serves the correction
    and the next step; ``pece=True`` re-evaluates at the corrected point (2 NFE/step)."""
    extra_args = extra_args or {}
    scale = NoiseScale.power(1 + eta * eta)
    hist: list[tuple[float, torch.Tensor]] = []
    noise = _noise(noise_sampler, x)
    prev = None  # (x before the last predictor step, its sigma, the noise it added)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        den = _den(model, x, s, extra_args)
        if prev is not None and (pece or s_next > 0):  # PEC's last step needs no correction
            x_prev, s_prev, added = prev
            nodes = [(float(s), den), *hist][:corrector_order]
            x = _exp_step(x_prev, s_prev, float(s), nodes, scale) + added
            if pece:
                den = _den(model, x, s, extra_args)
        _report(callback, x, i, s, den)
        if s_next == 0:
            x = den
            continue
        hist = [(float(s), den), *hist][:max(predictor_order, corrector_order - 1)]
        x_next = _exp_step(x, float(s), float(s_next), hist[:predictor_order], scale)
        std = scale.noise_std(float(s), float(s_next)) * s_noise
        added = _renoise(torch.zeros_like(x), noise, s, s_next, std)
        prev = (x, float(s), added)
        x = x_next + added
    return x


@register_sampler("sa_solver_pece", family="comfyui", nfe_per_step=2, nfe_offset=-1,
                  aliases=("SA-Solver PECE",), stochastic=True, noise="brownian")
@torch.no_grad()
def sample_sa_solver_pece(model, x, sigmas, extra_args=None, callback=None, disable=None,
                          noise_sampler=None, eta=1.0, s_noise=1.0, predictor_order=3,
                          corrector_order=4):
    """SA-Solver in PECE mode (Xue et al. 2023): re-evaluates at the corrected point."""
    return sample_sa_solver(model, x, sigmas, extra_args, callback, disable, noise_sampler,
                            eta, s_noise, predictor_order, corrector_order, pece=True)


def _seeds(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, rs):
    """One exponential Runge–Kutta step per interval with stages at lambda_s + r h for r in
    ``rs``; each stage and the end use D_s and the latest stage's D (linear in lambda).
    The noise of every stage is the exact step's noise, composed along the stages so that
    all of them lie on one Brownian path: N(s->b) = (phi_b/phi_a) N(s->a) + N(a->b)."""
    extra_args = extra_args or {}
    scale = NoiseScale.power(1 + eta * eta)
    noise = _noise(noise_sampler, x)
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
            x_b = _exp_step(x, s, b, last, scale) + acc
            if j < len(rs):
                last = [(b, _den(model, x_b, sigmas.new_tensor(b), extra_args)), (s, den)]
            a = b
        x = x_b
    return x


@register_sampler("seeds_2", family="comfyui", nfe_per_step=2, nfe_offset=-1, aliases=("SEEDS-2",),
                  stochastic=True, noise="brownian")
@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   noise_sampler=None, eta=1.0, s_noise=1.0, r=0.5):
    """SEEDS-2 (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast
    High-Quality Sampling from Diffusion Models", arXiv:2305.14267, data prediction):
    a two-stage exponential SDE solver, stage at lambda_s + r h, for the SDE with
    tau = ``eta``. 2 NFE/step (1 on the last); eta = 0 is DPM-Solver-2 (order 2)."""
    return _seeds(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, (r,))


@register_sampler("seeds_3", family="comfyui", nfe_per_step=3, nfe_offset=-2, aliases=("SEEDS-3",),
                  stochastic=True, noise="brownian")
@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   noise_sampler=None, eta=1.0, s_noise=1.0, r_1=1 / 3, r_2=2 / 3):
    """SEEDS-3 (Gonzalez et al. 2023, arXiv:2305.14267): three stages at r = 1/3, 2/3,
    each using D_s and the previous stage (the DPM-Solver-3 tableau). 3 NFE/step (1 on
    the last); eta = 0 is DPM-Solver-3 (order 3)."""
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
