"""ComfyUI's schedulers (normal, simple, sgm_uniform, beta, linear_quadratic, kl_optimal):
shape, end points and one value each, worked out by hand from the definition."""

from __future__ import annotations

import math

import pytest
import torch

from convergence.samplers.schedules import get_sigmas

COMFY = ["normal", "simple", "sgm_uniform", "beta", "linear_quadratic", "kl_optimal"]


def _table(model):
    ac = model.alphas_cumprod.double()
    return ((1 - ac) / ac).sqrt()


def _sigma_at(model, t: float) -> float:
    """The training sigma at a fractional timestep, log-interpolated."""
    sig = _table(model)
    lo, w = int(math.floor(t)), t - math.floor(t)
    hi = min(lo + 1, len(sig) - 1)
    return math.exp((1 - w) * math.log(sig[lo]) + w * math.log(sig[hi]))


@pytest.mark.parametrize("name", COMFY)
@pytest.mark.parametrize("steps", [1, 2, 7, 40])
def test_decreasing_from_sigma_max_to_zero(model32, name, steps):
    s = get_sigmas(model32, name, steps)
    assert len(s) == steps + 1 and s.dtype == torch.float64
    assert s[0] == pytest.approx(model32.sigma_max, rel=1e-9) and s[-1] == 0
    assert (s[1:] < s[:-1]).all(), s


def test_normal_and_kl_optimal_end_at_sigma_min(model32):
    for name in ("normal", "kl_optimal"):
        assert get_sigmas(model32, name, 9)[-2] == pytest.approx(model32.sigma_min, rel=1e-9)


def test_normal_is_uniform_in_training_time(model32):
    """4 steps over t = 999 .. 0: the second sigma sits at t = 666."""
    s = get_sigmas(model32, "normal", 4)
    assert float(s[1]) == pytest.approx(_sigma_at(model32, 666.0), rel=1e-9)
    torch.testing.assert_close(s, get_sigmas(model32, "discrete", 4))


def test_sgm_uniform_drops_the_last_of_n_plus_one_timesteps(model32):
    """5 steps: t = 999, 799.2, 599.4, 399.6, 199.8 (0 dropped), then sigma = 0."""
    s = get_sigmas(model32, "sgm_uniform", 5)
    # t(sigma_max) is 999 only to the float32 rounding of the model's sigma_max (6e-8
    # relative), which moves these sigmas by up to 6e-8 relative
    assert float(s[1]) == pytest.approx(_sigma_at(model32, 799.2), rel=1e-6)
    assert float(s[4]) == pytest.approx(_sigma_at(model32, 199.8), rel=1e-6)


def test_simple_takes_every_t_over_n_th_training_sigma(model32):
    s = get_sigmas(model32, "simple", 4)
    sig = _table(model32)
    torch.testing.assert_close(s[:-1], sig[[999, 749, 499, 249]])


def test_beta_midpoint_is_the_middle_timestep(model32):
    """Beta(0.6, 0.6) is symmetric, so its median is 0.5: 2 steps put t = 499.5."""
    s = get_sigmas(model32, "beta", 2)
    assert float(s[1]) == pytest.approx(_sigma_at(model32, 499.5), rel=1e-9)


def test_linear_quadratic_by_hand(model32):
    """4 steps, threshold 0.025: linear 0, 0.0125, 0.025; quadratic a (i-2)^2 + 0.0125 i with
    a = (1 - 0.025 - 0.0125 * 2) / 4 = 0.2375: u(3) = 0.275, u(4) = 1."""
    s = get_sigmas(model32, "linear_quadratic", 4)
    u = torch.tensor([0, 0.0125, 0.025, 0.275, 1.0], dtype=torch.float64)
    torch.testing.assert_close(s, model32.sigma_max * (1 - u))


def test_kl_optimal_is_uniform_in_arctan_sigma(model32):
    s = get_sigmas(model32, "kl_optimal", 3)
    mid = math.tan((math.atan(model32.sigma_max) + math.atan(model32.sigma_min)) / 2)
    assert float(s[1]) == pytest.approx(mid, rel=1e-12)
