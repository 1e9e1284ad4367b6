"""Rectified-flow pipelines (Stable Diffusion 3) seen as a k-diffusion denoiser.

The network is trained on x_t = (1 - t) x0 + t eps and predicts the velocity v = eps - x0.
Divided by (1 - t) that is x = x_t / (1 - t) = x0 + sigma * eps with sigma = t / (1 - t):
the VE form every sampler of the harness works in (as ComfyUI runs k-diffusion samplers
on flow models). So D(x, sigma) = x_t - t * v with t = sigma / (1 + sigma) and
x_t = x / (1 + sigma), and a VE Euler step is exactly the flow's Euler step.

The model's noise levels are its scheduler's: the training grid t_i = shift(i / N)
(``shift`` of the scheduler config, 3.0 for SD3), sigma_max the largest finite one
(t = 1 is sigma = infinity, which only ``FlowMatchEulerDiscreteScheduler`` itself visits,
see samplers/diffusers_adapter.py).
"""

from __future__ import annotations

from typing import Any

import torch

from convergence.core.errors import ConvergenceError
from convergence.models.base import Conditioning
from convergence.models.diffusers_backend import LatentPipelineModel

#: a sigma this large stands for t = 1 (pure noise): t = sigma / (1 + sigma) rounds to 1 in
#: float32 timesteps (1000 * t == 1000.0) and x / (1 + sigma) recovers x_t to float32 rounding
SIGMA_AT_T1 = 1e10


def flow_sigma_to_ve(t: torch.Tensor) -> torch.Tensor:
    """t / (1 - t), with t = 1 mapped to :data:`SIGMA_AT_T1` (float64)."""
    t = t.to(torch.float64)
    return torch.where(t < 1, t / (1 - t).clamp(min=1 / SIGMA_AT_T1), torch.full_like(t, SIGMA_AT_T1))


class FlowMatchModel(LatentPipelineModel):
    """SD3-style pipeline: MMDiT transformer, velocity prediction, shifted flow schedule."""

    schedule_keys = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift",
                     "max_shift", "shift_terminal", "invert_sigmas")
    #: no discrete VP schedule: DDIM/PLMS's ``ddim_uniform`` and the VP schedulers refuse it
    alphas_cumprod = None

    def __init__(self, pipe, model_cfg, width: int, height: int, device: torch.device,
                 dtype: torch.dtype):
        super().__init__(pipe, model_cfg, width, height, device, dtype)
        cfg = self.scheduler_config
        if cfg.get("use_dynamic_shifting") or cfg.get("invert_sigmas"):
            raise ConvergenceError(f"{self.path!r}: resolution-dependent (dynamic) or inverted flow "
                                   "shifting is not supported; SD3's fixed shift is")
        self.num_train_timesteps = int(cfg.get("num_train_timesteps", 1000))
        self.shift = float(cfg.get("shift", 1.0))
        grid = self.training_flow_sigmas()
        finite = grid[grid < 1]
        self.sigma_min = float(flow_sigma_to_ve(finite.min()))
        self.sigma_max = float(flow_sigma_to_ve(finite.max()))

    def training_flow_sigmas(self) -> torch.Tensor:
        """The scheduler's training grid t_i = shift(i / N), i = N..1 (float64)."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        sched = FlowMatchEulerDiscreteScheduler.from_config(_public(self.scheduler_config))
        return sched.sigmas.to(torch.float64).cpu()

    def flow_schedule(self, steps: int) -> torch.Tensor:
        """The pipeline's own ``steps`` flow sigmas (its shift), ending at 0 (float64)."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        sched = FlowMatchEulerDiscreteScheduler.from_config(_public(self.scheduler_config))
        sched.set_timesteps(steps)
        return sched.sigmas.to(torch.float64).cpu()

    def _encode(self, prompts: list[str]) -> Conditioning:
        """Both CLIP encoders (and T5 where the pipeline has one; zeros where it was left
        out, as SD3 allows), once per batch; negative prompt "" as the pipeline's default."""
        cond, uncond, pooled, neg_pooled = self.pipe.encode_prompt(
            list(prompts), None, None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=True)
        return Conditioning(cond={"encoder_hidden_states": cond, "pooled_projections": pooled},
                            uncond={"encoder_hidden_states": uncond,
                                    "pooled_projections": neg_pooled})

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        s64 = sigma.detach().to("cpu", torch.float64).reshape(-1)
        t64 = s64 / (1 + s64)
        shape = (-1, *([1] * (x.ndim - 1)))
        t = t64.to(x.device, torch.float32).reshape(shape)
        xt = x.to(torch.float32) / (1 + s64.to(x.device, torch.float32)).reshape(shape)
        timestep = (t64 * self.num_train_timesteps).to(x.device, torch.float32)
        v = self.net(hidden_states=xt.to(self.dtype), timestep=timestep,
                     encoder_hidden_states=cond["encoder_hidden_states"],
                     pooled_projections=cond["pooled_projections"],
                     return_dict=False)[0].to(torch.float32)
        return (xt - t * v).to(x.dtype)


def _public(config: dict) -> dict:
    """A scheduler config without diffusers' private keys (``_class_name``, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_") or k == "_use_default_values"}
