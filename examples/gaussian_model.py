"""A user's own model, as convergence takes it: a k-diffusion-style denoiser D(x, sigma).

The data are one-channel pictures drawn from a stationary Gaussian random field around a
smooth mean pattern: a smooth picture whose Fourier coefficients are independent, with
power P(k) falling off like (1 + |k|^2 / k0^2)^-2. The ideal denoiser is then closed-form,
a Wiener filter,

    D(x, sigma) = mu + F^-1[ P / (P + sigma^2) * F(x - mu) ],

and so is the probability-flow ODE's solution (``exact_solution``). It is written in EDM's
preconditioned form (Karras et al. 2022, eq. 7): D = c_skip x + c_out F(c_in x, c_noise),
with F the network a trained model would have; here F is the exact one. Unconditional,
one channel, any size; no file to download, no weights to train.

docs/plugins.md ("Your own model") runs it, tests/e2e/test_example_model.py runs that:

    PYTHONPATH=examples convergence all --config-dir examples study=gauss
"""

from __future__ import annotations

import functools
import math

import torch


class GaussianDenoiser(torch.nn.Module):
    """D(x, sigma) of a Gaussian random field, EDM-preconditioned; knows its noise range."""

    #: the noise range (read by convergence unless model.params sets it): EDM's sigma_max,
    #: and a sigma_min near SD-1.5's 0.0292. With EDM's 0.002 this smooth field's two exact
    #: limits, x(0) and D(x(sigma_min), sigma_min), lie closer than four times heun's
    #: 256-step error, and `convergence check` would not judge which one heun reaches
    sigma_min = 0.03
    sigma_max = 80.0
    #: one channel: convergence shows it grey
    channels = 1

    def __init__(self, sigma_data: float = 0.5, contrast: float = 0.8, k0: float = 3.0):
        super().__init__()
        if not sigma_data > 0 or not 0 < contrast <= 1 or not k0 > 0:
            raise ValueError(f"need sigma_data > 0, 0 < contrast <= 1 and k0 > 0, got "
                             f"sigma_data={sigma_data}, contrast={contrast}, k0={k0}")
        self.sigma_data, self.contrast, self.k0 = float(sigma_data), float(contrast), float(k0)

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a few sizes per process, never freed early
    def moments(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean picture (H, W) and the power per Fourier coefficient (H, W), float64;
        the power is scaled so a pixel's variance is sigma_data^2 (orthonormal FFT)."""
        y = torch.linspace(-1, 1, height, dtype=torch.float64)[:, None]
        x = torch.linspace(-1, 1, width, dtype=torch.float64)[None, :]
        mean = self.contrast * torch.sin(math.pi * x) * torch.cos(1.5 * math.pi * y)
        ky = torch.fft.fftfreq(height, 1 / height, dtype=torch.float64)[:, None]
        kx = torch.fft.fftfreq(width, 1 / width, dtype=torch.float64)[None, :]
        power = (1 + (kx**2 + ky**2) / self.k0**2) ** -2
        return mean, power * (self.sigma_data**2 / power.mean())

    def _filter(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """mu + F^-1[gain * F(x - mu)] per picture (gain: per Fourier coefficient)."""
        mean, _ = self.moments(x.shape[-2], x.shape[-1])
        mean = mean.to(x.dtype)
        spec = torch.fft.fft2(x - mean, norm="ortho") * gain.to(x.dtype)
        return mean + torch.fft.ifft2(spec, norm="ortho").real

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5
        c_in = 1 / (sigma**2 + sd2) ** 0.5
        return c_skip, c_out, c_in

    def inner(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """F, the exact network of the preconditioned form: (D - c_skip x) / c_out, with
        sigma = exp(4 c_noise) (EDM's c_noise = ln(sigma) / 4)."""
        sigma = (4 * c_noise).exp()
        c_skip, c_out, c_in = self.scalings(sigma)
        x = x_in / c_in
        _, power = self.moments(x.shape[-2], x.shape[-1])
        d = self._filter(x, power / (power + sigma**2))
        return (d - c_skip * x) / c_out

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in = self.scalings(sigma)
        return c_skip * x + c_out * self.inner(c_in * x, sigma.log() / 4)

    def exact_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """The probability-flow ODE dx/dsigma = (x - D) / sigma from sigma_from to sigma_to,
        in float64: each Fourier coefficient of x - mu scales by
        sqrt((P + sigma_to^2) / (P + sigma_from^2))."""
        _, power = self.moments(x.shape[-2], x.shape[-1])
        return self._filter(x.to(torch.float64),
                            ((power + sigma_to**2) / (power + sigma_from**2)).sqrt())


def make_denoiser(sigma_data: float = 0.5, contrast: float = 0.8,
                  k0: float = 3.0) -> GaussianDenoiser:
    """The factory ``model._target_`` names; ``model.params.*`` are its keywords."""
    return GaussianDenoiser(sigma_data, contrast, k0)
