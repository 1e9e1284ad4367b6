"""A user's own model, as convergence takes it: a k-diffusion-style denoiser D(x, sigma).

The data are one-channel pictures drawn from a Gaussian with a per-pixel mean (a smooth
pattern) and a per-pixel standard deviation, so the ideal denoiser is closed-form,

    D(x, sigma) = mu + v / (v + sigma^2) * (x - mu),     v = std^2,

and so is the probability-flow ODE's solution (``exact_solution``). It is written in EDM's
preconditioned form (Karras et al. 2022, eq. 7): D = c_skip x + c_out F(c_in x, c_noise),
with F the network a trained model would have; here F is the exact one. Unconditional,
one channel, any size. No file to download, no weights to train.

Used by docs/plugins.md ("Your own model") and tests/e2e/test_example_model.py:

    PYTHONPATH=examples convergence run name=gauss model._target_=gaussian_model.make_denoiser \\
        model.name=gauss ...
"""

from __future__ import annotations

import math

import torch


class GaussianDenoiser(torch.nn.Module):
    """D(x, sigma) of a per-pixel Gaussian, EDM-preconditioned; knows its noise range."""

    #: EDM's noise range (read by convergence unless model.params sets it)
    sigma_min = 0.002
    sigma_max = 80.0
    #: one channel: convergence shows it grey
    channels = 1

    def __init__(self, sigma_data: float = 0.5, contrast: float = 0.8):
        super().__init__()
        if not sigma_data > 0 or not 0 < contrast <= 1:
            raise ValueError(f"need sigma_data > 0 and 0 < contrast <= 1, got {sigma_data}, "
                             f"{contrast}")
        self.sigma_data = float(sigma_data)
        self.contrast = float(contrast)

    def moments(self, height: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
        """Mean and variance per pixel (1, 1, H, W): a pattern of two waves, and a variance
        that grows from the centre outwards (the picture is sharp in the middle)."""
        y = torch.linspace(-1, 1, height, dtype=torch.float64)[:, None]
        x = torch.linspace(-1, 1, width, dtype=torch.float64)[None, :]
        mean = self.contrast * torch.sin(math.pi * x) * torch.cos(1.5 * math.pi * y)
        std = self.sigma_data * (0.2 + 0.8 * (x**2 + y**2) / 2)
        return mean[None, None].to(dtype), (std**2)[None, None].to(dtype)

    def inner(self, x_in: torch.Tensor, c_noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """F, the exact network of the preconditioned form: (D - c_skip x) / c_out."""
        mean, var = self.moments(x_in.shape[-2], x_in.shape[-1], x_in.dtype)
        c_skip, c_out, c_in = self.scalings(sigma)
        x = x_in / c_in
        d = mean + var / (var + sigma**2) * (x - mean)
        return (d - c_skip * x) / c_out

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5
        c_in = 1 / (sigma**2 + sd2) ** 0.5
        return c_skip, c_out, c_in

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in = self.scalings(sigma)
        return c_skip * x + c_out * self.inner(c_in * x, sigma.log() / 4, sigma)

    def exact_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """The probability-flow ODE dx/dsigma = (x - D) / sigma from sigma_from to
        sigma_to: x - mu scales by sqrt((v + sigma_to^2) / (v + sigma_from^2))."""
        mean, var = self.moments(x.shape[-2], x.shape[-1], torch.float64)
        x = x.to(torch.float64)
        return mean + (x - mean) * ((var + sigma_to**2) / (var + sigma_from**2)).sqrt()


def make_denoiser(sigma_data: float = 0.5, contrast: float = 0.8) -> GaussianDenoiser:
    """The factory ``model._target_`` names; ``model.params.*`` are its keywords."""
    return GaussianDenoiser(sigma_data, contrast)
