"""Discrete variance-preserving (DDPM) schedules shared by the analytic and diffusers models.

Stable Diffusion's training schedule ("scaled_linear" betas, 1000 steps) is used by the
analytic model too, so its noise levels, DDIM/PLMS timesteps and sigma range match SD's.
"""

from __future__ import annotations

import torch


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """alphā_t of SD 1.x/2.x (float64)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps,
                           dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - ā_t) / ā_t): the VE noise level of the scaled sample x_t / sqrt(ā_t)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
