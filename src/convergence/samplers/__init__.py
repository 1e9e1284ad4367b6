"""Samplers, their registry, schedules and per-cell noise.

k-diffusion is imported on first use (:func:`k_sampling`), not when the registry loads:
its import (torchvision and more) takes about a second that commands which only resolve
sampler and schedule names (`convergence analyze`, `report`) need not pay.
"""

from __future__ import annotations

from types import ModuleType


def k_sampling() -> ModuleType:
    """``k_diffusion.sampling``, imported on first use."""
    from k_diffusion import sampling
    return sampling
