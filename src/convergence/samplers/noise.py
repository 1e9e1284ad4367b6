"""Per-cell randomness: each batch row draws from generators seeded by its own cell.

That is what keeps a stochastic cell's image independent of which other cells share
its batch (k-diffusion's BrownianTreeNoiseSampler already takes one seed per row).
"""

from __future__ import annotations

import hashlib

import torch

from convergence.samplers import k_sampling


def derived_seed(seed: int, salt: str) -> int:
    """A 63-bit seed derived from the cell seed, so the step noise and the initial
    noise are different streams."""
    h = hashlib.sha256(f"{int(seed)}:{salt}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


class CellNoise:
    """Factory of per-row noise samplers for a batch of cells."""

    def __init__(self, seeds: list[int]):
        self.seeds = [int(s) for s in seeds]

    def gaussian(self, x: torch.Tensor, salt: str = "step-noise"):
        """``noise_sampler(sigma, sigma_next)`` drawing each row from its own generator."""
        gens = [torch.Generator("cpu").manual_seed(derived_seed(s, salt)) for s in self.seeds]
        shape, device, dtype = x.shape[1:], x.device, x.dtype

        def sample(sigma=None, sigma_next=None) -> torch.Tensor:
            rows = [torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]
            return torch.stack(rows).to(device, dtype)

        return sample

    def brownian(self, x: torch.Tensor, sigma_min: float, sigma_max: float):
        """Brownian-tree noise (SDE samplers), one tree per row."""
        seeds = [derived_seed(s, "brownian") % (2**31) for s in self.seeds]
        # a hair wider than the schedule: torchsde rounds times to 6 decimals and samplers
        # query exp(log(sigma)), which can land just outside [sigma_min, sigma_max]
        lo = torch.tensor(max(float(sigma_min) - 1e-5, float(sigma_min) / 2), dtype=torch.float64)
        hi = torch.tensor(float(sigma_max) + 1e-5, dtype=torch.float64)
        return k_sampling().BrownianTreeNoiseSampler(x, lo, hi, seed=seeds)
