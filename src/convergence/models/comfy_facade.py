"""What a ComfyUI sampler reads from its model, so custom-node samplers run unchanged.

ComfyUI samplers reach ``model.inner_model.inner_model.model_sampling`` (the counting
denoiser -> the CFG denoiser -> the model here) for ``sigma_min``, ``sigma_max``,
``percent_to_sigma``, ``timestep`` and ``sigma``, and test its kind with ``isinstance``
(EPS, V_PREDICTION, CONST). The values follow ComfyUI's ``comfy/model_sampling.py`` (read,
not copied): a model with a discrete training schedule is ``ModelSamplingDiscrete`` (its
sigmas, log-sigma interpolation, nearest timestep, percent p -> sigma(999 (1 - p))), any
other ``ModelSamplingContinuousEDM`` (timestep 0.25 log sigma, percent log-linear in
sigma). The harness hands every sampler a denoiser in the VE form x = x0 + sigma n, which
is what ComfyUI's EPS and V_PREDICTION kinds present, so a flow model is presented as EPS
too: CONST would send ComfyUI's samplers into their rectified-flow branches, whose
sigma lies in [0, 1].
"""

from __future__ import annotations

import math

import torch


class EPS:
    """ComfyUI's kind of an epsilon-prediction model."""


class V_PREDICTION(EPS):  # noqa: N801  (ComfyUI's name)
    """ComfyUI's kind of a v-prediction model (a subclass of EPS there too)."""


class CONST:
    """ComfyUI's kind of a rectified-flow model (never presented here: module doc)."""


class ModelSampling:
    """``sigma_min``, ``sigma_max``, ``sigma(t)``, ``timestep(sigma)``, ``percent_to_sigma``."""

    def __init__(self, sigmas: torch.Tensor | None, sigma_min: float, sigma_max: float):
        #: ascending training sigmas (discrete models), else None
        self.sigmas = sigmas
        self.log_sigmas = None if sigmas is None else sigmas.log()
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.log_sigmas is None:
            return 0.25 * sigma.log()
        dists = sigma.log().reshape(-1, 1) - self.log_sigmas.reshape(1, -1)
        return dists.abs().argmin(dim=1).reshape(sigma.shape)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float64)
        if self.log_sigmas is None:
            return (t / 0.25).exp()
        t = t.clamp(0, len(self.log_sigmas) - 1)
        lo, hi = t.floor().long(), t.ceil().long()
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        percent = 1.0 - percent
        if self.log_sigmas is None:
            lo = math.log(self.sigma_min)
            return math.exp((math.log(self.sigma_max) - lo) * percent + lo)
        return float(self.sigma(torch.tensor(percent * 999.0)))


def model_sampling(model) -> ModelSampling:
    """The ModelSampling of ``model``, of the kind its predictions have."""
    config = getattr(model, "scheduler_config", None) or {}
    kind = V_PREDICTION if config.get("prediction_type") == "v_prediction" else EPS
    cls = type(f"ModelSampling{kind.__name__}", (ModelSampling, kind), {})
    ac = model.alphas_cumprod
    if ac is None:
        return cls(None, model.sigma_min, model.sigma_max)
    sigmas = ((1 - ac.to(torch.float64).cpu()) / ac.to(torch.float64).cpu()) ** 0.5
    return cls(sigmas, float(sigmas[0]), float(sigmas[-1]))
