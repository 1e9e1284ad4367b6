"""The maths shared by the multistep and exponential samplers in :mod:`comfy`.

Every sampler there integrates the probability-flow ODE (or a reverse SDE with the same
marginals) of ``x = x0 + sigma * eps`` in one of two forms:

- Adams–Bashforth in sigma on ``d = (x - D) / sigma`` (``dx/dsigma = d``), the DEIS /
  iPNDM form: ``x_t = x_s + sum_j b_j d_j`` with ``b_j = int_{s}^{t} L_j(sigma) dsigma``;
- an exponential integrator on the data prediction ``D``. The reverse SDEs with a noise
  scale function phi (Cui et al. 2025, ER-SDE; phi(sigma) = sigma**(1 + tau**2) for the
  SA-Solver / SEEDS family, phi = sigma for the ODE) satisfy
  ``dx/dsigma = (phi'/phi) (x - D) + noise``, whose variation-of-constants solution is
  ``x_t = (phi_t/phi_s) x_s - phi_t int_s^t phi'/phi**2 D dsigma + N(s -> t)`` with the
  Gaussian ``N`` of variance ``sigma_t**2 - (phi_t sigma_s / phi_s)**2`` (that keeps the
  marginal ``x0 + sigma_t eps``). Interpolating D through earlier evaluations with
  Lagrange polynomials L_j (in lambda = -log sigma or in sigma) gives
  ``x_t = (phi_t/phi_s) x_s + sum_j b_j D_j``.

The weights are integrated by Gauss–Legendre quadrature in log sigma, exact to rounding
for the polynomial-times-exponential integrands met here and free of the cancellation
that closed forms (phi-functions) suffer at small step sizes. ComfyUI's DEIS instead
interpolates in the time of a VP SDE and sums its weights on a fixed grid
(:func:`deis_tab_weights`), which is part of what its ``deis`` computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)

Coord = Callable[[np.ndarray], np.ndarray]


def neg_log(sigma: np.ndarray) -> np.ndarray:
    """lambda = -log sigma, the log signal-to-noise ratio of a VE (k-diffusion) model."""
    return -np.log(sigma)


def identity(sigma: np.ndarray) -> np.ndarray:
    return np.asarray(sigma, dtype=np.float64)


def lagrange_integrals(nodes: Sequence[float], s: float, t: float,
                       kernel: Callable[[np.ndarray], np.ndarray],
                       coord: Coord = identity) -> list[float]:
    """``int_s^t kernel(sigma) L_j(coord(sigma)) dsigma`` for the Lagrange basis through
    ``coord(nodes)`` (sigmas of earlier evaluations), one weight per node."""
    u0, u1 = math.log(s), math.log(t)
    u = (u1 - u0) / 2 * _GL_X + (u1 + u0) / 2
    sig = np.exp(u)
    vals = kernel(sig) * sig * (u1 - u0) / 2 * _GL_W        # dsigma = sigma du
    basis = lagrange_basis(coord(np.asarray(nodes, dtype=np.float64)), coord(sig))
    return [float(np.sum(b * vals)) for b in basis]


def lagrange_basis(nodes: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """The Lagrange basis polynomials through ``nodes``, evaluated at ``y``."""
    out = []
    for j in range(len(nodes)):
        basis = np.ones_like(y)
        for k in range(len(nodes)):
            if k != j:
                basis = basis * (y - nodes[k]) / (nodes[j] - nodes[k])
        out.append(basis)
    return out


def adams_sigma_weights(nodes: Sequence[float], s: float, t: float) -> list[float]:
    """Variable-step Adams–Bashforth weights in sigma: x_t = x_s + sum_j b_j d_j."""
    return lagrange_integrals(nodes, s, t, np.ones_like)


class NoiseScale:
    """A noise scale function phi of the ER-SDE family and its derivative.

    ``power(1)`` is the probability-flow ODE; ``power(1 + tau**2)`` the SDE family of
    SA-Solver and SEEDS (tau = 1: the reverse-time SDE of Song et al. 2021)."""

    def __init__(self, phi: Callable[[np.ndarray], np.ndarray],
                 dphi: Callable[[np.ndarray], np.ndarray]):
        self.phi, self.dphi = phi, dphi

    @classmethod
    def power(cls, c: float) -> NoiseScale:
        return cls(lambda s: np.power(s, c), lambda s: c * np.power(s, c - 1))

    @classmethod
    def er_sde_5(cls) -> NoiseScale:
        """ER-SDE 5 of Cui et al. (phi(s) = s (exp(s**0.3) + 10)), the paper's choice."""
        return cls(lambda s: s * (np.exp(s**0.3) + 10),
                   lambda s: np.exp(s**0.3) * (1 + 0.3 * s**0.3) + 10)

    def ratio(self, s: float, t: float) -> float:
        """phi_t / phi_s: how much of x_s an exact step keeps."""
        return float(self.phi(np.float64(t)) / self.phi(np.float64(s)))

    def weights(self, nodes: Sequence[float], s: float, t: float,
                coord: Coord = neg_log) -> list[float]:
        """Weights b_j of the data predictions D_j at sigma ``nodes`` for a step s -> t."""
        phi_t = float(self.phi(np.float64(t)))
        return lagrange_integrals(nodes, s, t, lambda x: -phi_t * self.dphi(x) / self.phi(x)**2,
                                  coord)

    def noise_std(self, s: float, t: float) -> float:
        """Std of the noise an exact step s -> t adds: sqrt(sigma_t^2 - (phi_t/phi_s sigma_s)^2)."""
        kept = self.ratio(s, t) * s
        return math.sqrt(max(t * t - kept * kept, 0.0))


def deis_vp_time(sigma: np.ndarray, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 eps: float = 1e-3) -> tuple[np.ndarray, float, float]:
    """(t, beta_min, beta_d): sigma as the time t in [eps, 1] of the VP SDE with linear beta
    whose sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) runs from ``sigma_min`` at
    ``eps`` to ``sigma_max`` at 1 (DEIS's VP time, fitted to EDM's sigma range whatever the
    schedule, as ComfyUI's deis does)."""
    lo, hi = math.log(sigma_min**2 + 1), math.log(sigma_max**2 + 1)
    beta_d = 2 * (lo / eps - hi) / (eps - 1)
    beta_min = hi - beta_d / 2
    sigma = np.asarray(sigma, dtype=np.float64)
    t = (np.sqrt(beta_min**2 + 2 * beta_d * np.log(sigma**2 + 1)) - beta_min) / beta_d
    return t, beta_min, beta_d


def deis_tab_weights(sigmas: Sequence[float], max_order: int,
                     n_points: int = 10000) -> list[list[float]]:
    """Weights of ComfyUI's ``deis`` (tAB-DEIS, Zhang & Chen 2023, in ComfyUI's 'tab'
    mode), one list per step i: x_{i+1} = x_i + sum_j w_j d_{i-j} for d = dx/dsigma.

    d is interpolated by the Lagrange polynomials L_j in the VP time t
    (:func:`deis_vp_time`) through the last ``min(i + 1, max_order)`` points, and
    w_j = int L_j(t) dsigma/dt dt is approximated as ComfyUI does: dsigma/dt L_j summed
    over ``n_points`` evenly spaced t from t_i to t_{i+1}, both ends included, times
    (t_{i+1} - t_i) / n_points. That sum is not a quadrature rule of any order (it
    weighs n_points samples of a span of n_points - 1 gaps): its relative error is about
    h/n_points, which the weights keep. A first step (one point) and a step to sigma = 0
    (where dsigma/dt is infinite) have no list: they are Euler steps."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    t, beta_min, beta_d = deis_vp_time(sigmas)
    out: list[list[float]] = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1 or sigmas[i + 1] <= 0:
            out.append([])
            continue
        tau = np.linspace(t[i], t[i + 1], n_points)
        alpha = np.exp(-0.5 * tau**2 * beta_d - tau * beta_min)
        # dsigma/dt of sigma = sqrt(1/alpha - 1): -(d log alpha/dt) / (2 sqrt(alpha (1 - alpha)))
        dsigma_dt = 0.5 * (tau * beta_d + beta_min) / np.sqrt(alpha * (1 - alpha))
        dt = (t[i + 1] - t[i]) / n_points
        nodes = t[[i - k for k in range(order)]]
        out.append([float(np.sum(dsigma_dt * b) * dt) for b in lagrange_basis(nodes, tau)])
    return out
