"""diffusers' schedulers registered as samplers, each with its claims (the adapter that
runs them is samplers/diffusers_adapter.py)."""

from __future__ import annotations

from convergence.core.registries import register_sampler
from convergence.samplers.diffusers_adapter import (  # noqa: F401  (re-exported)
    SD_LIKE_CONFIG,
    SchedulerVariant,
    adapter,
    base_config,
    build_scheduler,
    euler_timesteps,
    pipeline_generators,
    t_to_sigma,
)

# Each scheduler with its claims. NFE: 1 per step, but two per step but the last for the
# two-stage ones (their final step to sigma = 0 is first order) and one extra on PLMS's
# first step. The k-diffusion/CompVis sampler of the same method names its scheduler with
# ``diffusers=`` (model.sampler_backend=diffusers swaps it in).
_D = {"family": "diffusers", "native_schedule": "discrete"}
_TWO_STAGE = {"nfe_per_step": 2, "nfe_offset": -1}
register_sampler("DDIMScheduler", adapter("DDIMScheduler"), **_D,
                 description="diffusers DDIM (eta = 0), 1 NFE/step")
register_sampler("PNDMScheduler", adapter("PNDMScheduler", skip_prk_steps=True), **_D,
                 nfe_offset=1, aliases=("PLMSScheduler", "pndm"),
                 description="diffusers PNDM with skip_prk_steps (PLMS), as SD ships it")
register_sampler("DDPMScheduler", adapter("DDPMScheduler"), **_D, stochastic=True,
                 aliases=("ddpm", "DDPM"), description="diffusers DDPM (ancestral, stochastic)")
register_sampler("LMSDiscreteScheduler", adapter("LMSDiscreteScheduler"), **_D,
                 description="diffusers linear multistep (order 4)")
register_sampler("EulerDiscreteScheduler", adapter("EulerDiscreteScheduler"), **_D,
                 description="diffusers Euler, 1 NFE/step")
register_sampler("EulerAncestralDiscreteScheduler", adapter("EulerAncestralDiscreteScheduler"),
                 **_D, stochastic=True, description="diffusers Euler ancestral (stochastic)")
register_sampler("HeunDiscreteScheduler", adapter("HeunDiscreteScheduler"), **_D, **_TWO_STAGE,
                 description="diffusers Heun (2 NFE/step but the last)")
register_sampler("KDPM2DiscreteScheduler", adapter("KDPM2DiscreteScheduler"), **_D, **_TWO_STAGE,
                 description="diffusers KDPM2 (DPM-2, 2 NFE/step)")
register_sampler("KDPM2AncestralDiscreteScheduler", adapter("KDPM2AncestralDiscreteScheduler"),
                 **_D, **_TWO_STAGE, stochastic=True,
                 description="diffusers KDPM2 ancestral (stochastic)")
register_sampler("DPMSolverMultistepScheduler",
                 adapter("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++",
                         solver_order=2), **_D, aliases=("DPMSolverMultistepScheduler_2M",),
                 description="diffusers DPM-Solver++(2M)")
register_sampler("DPMSolverMultistepScheduler_SDE",
                 adapter("DPMSolverMultistepScheduler_SDE", "DPMSolverMultistepScheduler",
                         algorithm_type="sde-dpmsolver++", solver_order=2), **_D,
                 stochastic=True, aliases=("DPMSolverMultistepSDEScheduler",),
                 description="diffusers DPM-Solver++(2M) SDE (stochastic)")
register_sampler("DPMSolverSinglestepScheduler",
                 adapter("DPMSolverSinglestepScheduler", algorithm_type="dpmsolver++",
                         solver_order=2), **_D, aliases=("dpmpp_2s",),
                 description="diffusers DPM-Solver++ single-step, order 2")
register_sampler("UniPCMultistepScheduler", adapter("UniPCMultistepScheduler", solver_type="bh2"),
                 **_D, aliases=("uni_pc_bh2", "UniPC bh2"),
                 description="diffusers UniPC, B(h) = bh2 (diffusers' default)")
register_sampler("UniPCMultistepScheduler_bh1",
                 adapter("UniPCMultistepScheduler_bh1", "UniPCMultistepScheduler",
                         solver_type="bh1", final_sigmas_type="sigma_min"), **_D,
                 aliases=("uni_pc", "UniPC"),
                 description="diffusers UniPC, B(h) = bh1 (ComfyUI uni_pc, A1111 UniPC); ends "
                 "at sigma_min: its bh1 update is NaN on a last step to sigma = 0")
register_sampler("DEISMultistepScheduler", adapter("DEISMultistepScheduler"), **_D,
                 description="diffusers DEIS multistep, order 2 (ComfyUI's `deis` is the "
                 "k-diffusion-form one in samplers/comfy.py)")
register_sampler("LCMScheduler", adapter("LCMScheduler"), **_D, stochastic=True,
                 aliases=("lcm", "LCM"),
                 description="diffusers LCM (for LCM-distilled models; stochastic between steps)")
register_sampler("TCDScheduler", adapter("TCDScheduler"), **_D, stochastic=True,
                 aliases=("tcd", "TCD"),
                 description="diffusers TCD (for TCD-distilled models; gamma = 0.3 re-noises)")
register_sampler("DPMSolverMultistepScheduler_3M",
                 adapter("DPMSolverMultistepScheduler_3M", "DPMSolverMultistepScheduler",
                         algorithm_type="dpmsolver++", solver_order=3), **_D,
                 aliases=("dpmpp_3m",), description="diffusers DPM-Solver++(3M) (InvokeAI dpmpp_3m)")
# InvokeAI's *_k names of methods only diffusers has: its Karras sigmas
register_sampler("DPMSolverSinglestepScheduler_karras",
                 adapter("DPMSolverSinglestepScheduler_karras", "DPMSolverSinglestepScheduler",
                         algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True),
                 **_D, aliases=("dpmpp_2s_k",),
                 description="DPMSolverSinglestepScheduler with Karras sigmas (InvokeAI dpmpp_2s_k)")
register_sampler("DPMSolverMultistepScheduler_3M_karras",
                 adapter("DPMSolverMultistepScheduler_3M_karras", "DPMSolverMultistepScheduler",
                         algorithm_type="dpmsolver++", solver_order=3, use_karras_sigmas=True),
                 **_D, aliases=("dpmpp_3m_k",),
                 description="DPMSolverMultistepScheduler_3M with Karras sigmas (InvokeAI "
                 "dpmpp_3m_k)")
register_sampler("UniPCMultistepScheduler_karras",
                 adapter("UniPCMultistepScheduler_karras", "UniPCMultistepScheduler",
                         solver_type="bh2", use_karras_sigmas=True), **_D, aliases=("unipc_k",),
                 description="UniPCMultistepScheduler with Karras sigmas (InvokeAI unipc_k)")
register_sampler("FlowMatchEulerDiscreteScheduler", adapter("FlowMatchEulerDiscreteScheduler"),
                 **_D, aliases=("flow_euler", "FlowMatchEuler"),
                 description="diffusers flow-matching Euler (SD3's own sampler; flow models only)")
