"""The embedded analytic model: exact denoiser, exact ODE solution, sizes, topics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from convergence.core.errors import ConvergenceError
from convergence.models.analytic import EXACT_RTOL, AnalyticModel, exact_solution
from convergence.models.base import GuidedDenoiser
from convergence.run.plan import Cell
from convergence.run.runner import sample_batch
from convergence.samplers.schedules import get_sigmas


def _synthetic(model32: AnalyticModel, seed: int = 0):
    """A copy of the model holding a tiny 3-component mixture in d = 12."""
    rng = np.random.default_rng(seed)
    K, d, r = 3, 12, 2
    mu = rng.normal(size=(K, d))
    U = np.stack([np.linalg.qr(rng.normal(size=(d, r)))[0] for _ in range(K)])
    lam = rng.uniform(0.2, 2.0, size=(K, r))
    m = AnalyticModel.__new__(AnalyticModel)
    m.__dict__.update(model32.__dict__)
    m.pictures = ["a", "b", "c"]
    m.topics = {"ab": ("a", "b"), "c": ("c",)}
    m.set_components(mu, U, lam, 0.3**2)
    return m, mu, U, lam


def _dense_posterior_mean(x, sigma, mu, U, lam, s2, log_w):
    """E[x0 | x] with dense covariances and scipy's Gaussian densities."""
    d = mu.shape[1]
    logp, means = [], []
    for k in range(len(mu)):
        cov = U[k] @ np.diag(lam[k]) @ U[k].T + s2 * np.eye(d)
        noisy = cov + sigma**2 * np.eye(d)
        logp.append(log_w[k] + multivariate_normal(mu[k], noisy).logpdf(x))
        means.append(mu[k] + cov @ np.linalg.solve(noisy, x - mu[k]))
    logp = np.array(logp)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    return (w[:, None] * np.array(means)).sum(0)


@pytest.mark.portable
@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0, 14.6])
def test_denoiser_equals_dense_posterior_mean(model32, sigma):
    m, mu, U, lam = _synthetic(model32)
    rng = np.random.default_rng(1)
    x = mu[1] + rng.normal(size=12) * (1 + sigma)
    log_w = np.log([0.5, 0.3, 0.2])
    got = m.denoise(torch.tensor(x).reshape(1, 3, 2, 2), torch.tensor([sigma], dtype=torch.float64),
                    torch.tensor(log_w)[None]).reshape(-1).numpy()
    want = _dense_posterior_mean(x, sigma, mu, U, lam, m.s2, log_w)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_denoiser_matches_monte_carlo_posterior_mean(model32):
    """Brute force: sample x0 from the mixture prior, weight by the likelihood of x."""
    m, mu, U, lam = _synthetic(model32)
    rng = np.random.default_rng(2)
    n, sigma = 400_000, 1.5
    w = np.array([0.5, 0.3, 0.2])
    k = rng.choice(3, size=n, p=w)
    z = rng.normal(size=(n, 2)) * np.sqrt(lam[k])
    x0 = mu[k] + np.einsum("ndr,nr->nd", U[k], z) + rng.normal(size=(n, 12)) * np.sqrt(m.s2)
    x = mu[0] + 0.5 * rng.normal(size=12)
    logl = -0.5 * ((x - x0) ** 2).sum(1) / sigma**2
    p = np.exp(logl - logl.max())
    mc = (p[:, None] * x0).sum(0) / p.sum()
    got = m.denoise(torch.tensor(x).reshape(1, 3, 2, 2), torch.tensor([sigma], dtype=torch.float64),
                    torch.tensor(np.log(w))[None]).reshape(-1).numpy()
    ess = p.sum() ** 2 / (p**2).sum()
    assert ess > 200, ess
    np.testing.assert_allclose(got, mc, atol=0.08)


def test_topic_conditioning_and_guidance(model32):
    """A clean conditional sample lies on a picture of its topic."""
    topics = ["anime", "nature", "food", "animals", "people"]
    cells = [Cell("analytic", "h", t, "p", s, "heun", "karras", 40, 7.5, 32, 32)
             for t in topics for s in (1, 2)]
    out = sample_batch(model32, cells).samples
    m, idx = model32.mahalanobis_per_dim(out)
    for cell, k, dist in zip(cells, idx.tolist(), m.tolist(), strict=True):
        assert model32.pictures[k] in model32.topics[cell.topic], (cell.topic, model32.pictures[k])
        assert dist < 3.0, (cell.topic, dist)


@pytest.mark.portable
def test_exact_solution_meets_its_tolerance(model32):
    cond = model32.encode_prompts(["p", "q"], ["people", "nature"])
    sig = get_sigmas(model32, "karras", 10)
    x = model32.initial_noise([5, 6], 32, 32) * sig[0]
    smin = float(sig[-2])
    a = exact_solution(model32, x, float(sig[0]), smin, cond, 7.5, denoise_at_end=True)
    b = exact_solution(model32, x, float(sig[0]), smin, cond, 7.5, denoise_at_end=True,
                       rtol=EXACT_RTOL / 100, atol=EXACT_RTOL / 100)
    assert (a - b).abs().max() < 1e-7
    # and a fine second-order sampler converges to it
    cells = [Cell("analytic", "h", t, "p", s, "heun", "karras", 400, 7.5, 32, 32)
             for t, s in (("people", 5), ("nature", 6))]
    fine = sample_batch(model32, cells).samples
    assert (fine - a).abs().max() < 1e-3


@pytest.mark.portable
@pytest.mark.parametrize("denoise", [False, True])
def test_reduced_exact_solution_equals_full_dimensional_solve(model32, denoise):
    cond = model32.encode_prompts(["p", "q"], ["animals", "anime"])
    x = model32.initial_noise([7, 8], 32, 32) * 14.6
    full = exact_solution(model32, x, 14.6, 0.05, cond, 7.5, denoise, reduce=False)
    reduced = exact_solution(model32, x, 14.6, 0.05, cond, 7.5, denoise)
    assert (full - reduced).abs().max() < 1e-7


def test_closed_form_tail_to_zero_matches_integration(model32):
    cond = model32.encode_prompts(["p"], ["food"])
    x = model32.initial_noise([3], 32, 32) * 14.6
    to_zero = exact_solution(model32, x, 14.6, 0.0, cond, 1.0)
    near_zero = exact_solution(model32, x, 14.6, 2e-4, cond, 1.0)
    # from 2e-4 to 0 the sample moves by O(sigma^2 / variance): tiny but non-zero
    assert 0 < (to_zero - near_zero).abs().max() < 1e-4


def test_guided_denoiser_is_one_batched_call(model32):
    calls = []
    orig = model32.denoise

    def spy(x, sigma, cond):
        calls.append(x.shape[0])
        return orig(x, sigma, cond)

    model32.denoise = spy
    try:
        cond = model32.encode_prompts(["a", "b", "c"], ["food", "people", "anime"])
        x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
        GuidedDenoiser(model32)(x, torch.tensor(2.0), conditioning=cond, cfg_scale=7.5)
    finally:
        del model32.denoise
    assert calls == [6]


@pytest.mark.parametrize("size", [(30, 32), (32, 31), (512, 512), (16, 16)])
def test_sizes_the_model_cannot_take(size):
    with pytest.raises(ConvergenceError, match="cannot make"):
        AnalyticModel(*size)


def test_decode_range_and_shape(model32):
    x = torch.linspace(-2, 2, 3 * 32 * 32, dtype=torch.float64).reshape(1, 3, 32, 32)
    img = model32.decode(x)
    assert img.shape == (1, 32, 32, 3) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() == 255


@pytest.mark.portable
def test_collapsed_posterior_takes_the_closed_form_from_sigma_min(model32):
    # at a schedule's sigma_min every posterior sits on one picture, so the flow to 0 is
    # closed-form from there: it must equal integrating down to 2e-4 first (the integrator
    # meets EXACT_RTOL = 1e-10 relative; 1e-8 leaves room for the state's O(1) norm)
    cond = model32.encode_prompts(["p", "q"], ["people", "anime"])
    sig = get_sigmas(model32, "karras", 10)
    smin = float(sig[-2])
    x = exact_solution(model32, model32.initial_noise([5, 6], 32, 32) * sig[0], float(sig[0]),
                       smin, cond, 7.5)
    direct = exact_solution(model32, x, smin, 0.0, cond, 7.5)
    stepped = exact_solution(model32, exact_solution(model32, x, smin, 2e-4, cond, 7.5),
                             2e-4, 0.0, cond, 7.5)
    assert (direct - stepped).abs().max() < 1e-8
    assert (direct - x).abs().max() > 1e-4  # the tail does move the sample


@pytest.mark.portable
@pytest.mark.parametrize("sigma", [14.6, 1.0, 0.05])
@pytest.mark.parametrize("cfg_scale", [1.0, 7.5])
def test_guided_denoise_equals_two_rows_mixed(model32, sigma, cfg_scale):
    # the exact solver's one-projection guidance equals GuidedDenoiser's cond and uncond
    # rows mixed; measured <= 1.8e-15 relative (rounding times the CFG scale), so 1e-13
    cond = model32.encode_prompts(["p"] * 3, ["people", "anime", "food"])
    x = (model32.initial_noise([1, 2, 3], 32, 32) * sigma
         + 0.5 * model32.mu[[0, 2, 5]].reshape(3, 3, 32, 32))
    s = torch.full((3,), sigma, dtype=torch.float64)
    two_rows = GuidedDenoiser(model32)(x, s, conditioning=cond, cfg_scale=cfg_scale)
    one = model32.guided_denoise(x, s, cond, cfg_scale)
    assert ((one - two_rows).abs().max() / two_rows.abs().max()) < 1e-13


def test_recorded_model_is_the_built_one_bit_for_bit(model32, tmp_path):
    from convergence.models.analytic import MixtureSpec
    model32.record(tmp_path)
    again = AnalyticModel.recorded(tmp_path, 32, 32)
    assert again is not None and again.fingerprint() == model32.fingerprint()
    for name in ("mu", "U", "lam", "basis", "muU"):
        assert torch.equal(getattr(again, name), getattr(model32, name)), name
    x = model32.initial_noise([1, 2], 32, 32).double() * 3.0
    cond = model32.encode_prompts(["p", "q"], ["food", "people"])
    s = torch.full((2,), 3.0, dtype=torch.float64)
    assert torch.equal(again.guided_denoise(x, s, cond, 7.5),
                       model32.guided_denoise(x, s, cond, 7.5))
    # another size, another mixture or a damaged file: no record (the analysis builds)
    assert AnalyticModel.recorded(tmp_path, 64, 64) is None
    assert AnalyticModel.recorded(tmp_path, 32, 32, MixtureSpec(rank=8)) is None
    path = tmp_path / "model" / "analytic-32x32.npz"
    data = path.read_bytes()
    mid = len(data) // 2  # inside the bases: the fingerprint reads, the CRC does not match
    for damaged in (data[:1000], data[:mid] + bytes(64) + data[mid + 64:]):
        path.write_bytes(damaged)
        assert AnalyticModel.recorded(tmp_path, 32, 32) is None
