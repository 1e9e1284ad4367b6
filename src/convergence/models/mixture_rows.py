"""The analytic mixture's per-row arithmetic, one row at a time in a fixed order.

Everything the denoiser computes from a row's projections (quadratic forms,
log-likelihoods, responsibilities, the output's coefficients) is a loop over that row's
own numbers, written out here in the order it runs: no reduction is vectorised across
rows and none is reassociated (numba compiles without fast-math), and ``log``/``exp``
are the C library's scalar functions for every element. A torch version of the same
formulas is not row-independent by construction: ATen evaluates the last elements of a
tensor that do not fill a vector with the scalar ``log`` and the others with SLEEF's
vector ``log``, so which function a row gets depends on the batch's size.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def log_likelihoods(both, xsq, sigma, mu_u, mu_sq, lam, s2, d, with_logdet):
    """(quad, loglik), each (B, K): the Mahalanobis form (x - mu_k)^T (Cov_k + sigma^2)^-1
    (x - mu_k) and -(quad + log det) / 2, from the projections ``both`` = x @ [U_1..U_K,
    mu_1..mu_K] (B, K*r + K) and |x|^2. ``with_logdet`` False leaves log det out (a
    constant in x: only the distances are wanted)."""
    rows = both.shape[0]
    n_comp, rank = lam.shape
    quad = np.empty((rows, n_comp))
    loglik = np.empty((rows, n_comp))
    for b in range(rows):
        c = s2 + sigma[b] * sigma[b]
        log_c = math.log(c)
        for k in range(n_comp):
            res_sq = xsq[b] - 2.0 * both[b, n_comp * rank + k] + mu_sq[k]
            p2 = 0.0
            p2_full = 0.0
            log_full = 0.0
            for j in range(rank):
                proj = both[b, k * rank + j] - mu_u[k, j]
                full = lam[k, j] + c
                p2 += proj * proj
                p2_full += proj * proj / full
                if with_logdet:
                    log_full += math.log(full)
            q = (res_sq - p2) / c + p2_full
            quad[b, k] = q
            loglik[b, k] = -0.5 * (q + ((d - rank) * log_c + log_full))
    return quad, loglik


@njit(nogil=True, cache=True)
def _softmax_row(logits, out):
    top = -math.inf
    for v in logits:
        top = max(top, v)
    total = 0.0
    for k in range(logits.shape[0]):
        out[k] = math.exp(logits[k] - top)
        total += out[k]
    for k in range(logits.shape[0]):
        out[k] /= total


@njit(nogil=True, cache=True)
def responsibilities(loglik, log_w, log_w_uncond, cfg_scale):
    """softmax(log_w + loglik) per row; with ``cfg_scale`` != 1 the guided mix
    r_u + (r_c - r_u) * cfg_scale of the conditional and unconditional ones (the
    output is linear in the responsibilities, so guidance mixes them)."""
    rows, n_comp = loglik.shape
    resp = np.empty((rows, n_comp))
    uncond = np.empty(n_comp)
    for b in range(rows):
        _softmax_row(log_w[b] + loglik[b], resp[b])
        if cfg_scale != 1.0:
            _softmax_row(log_w_uncond[b] + loglik[b], uncond)
            for k in range(n_comp):
                resp[b, k] = uncond[k] + (resp[b, k] - uncond[k]) * cfg_scale
    return resp


@njit(nogil=True, cache=True)
def output_coefficients(both, resp, sigma, mu_u, lam, s2):
    """(coef, gain_iso): the output is gain_iso * x + coef @ [U_1..U_K, mu_1..mu_K]^T,
    i.e. the Wiener filter of each component weighted by its responsibility."""
    rows = both.shape[0]
    n_comp, rank = lam.shape
    coef = np.empty((rows, n_comp * rank + n_comp))
    gain_iso = np.empty(rows)
    for b in range(rows):
        c = s2 + sigma[b] * sigma[b]
        g = s2 / c
        gain_iso[b] = g
        for k in range(n_comp):
            for j in range(rank):
                full = lam[k, j] + c
                proj = both[b, k * rank + j] - mu_u[k, j]
                coef[b, k * rank + j] = resp[b, k] * ((lam[k, j] + s2) / full - g) * proj
            coef[b, n_comp * rank + k] = (1.0 - g) * resp[b, k]
    return coef, gain_iso
