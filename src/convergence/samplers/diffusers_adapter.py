"""The adapter that runs a diffusers scheduler behind the project's sampler signature.

Each adapter builds the scheduler from the model's own scheduler config (``from_config``,
as a diffusers user swaps schedulers), lets it choose its timesteps for ``ctx.steps``,
and drives the harness's counting denoiser instead of a UNet. Nothing is re-implemented:
the scheduler's ``scale_model_input`` gives the latent the UNet would see (z), the
harness's denoiser is called at the VE point x = z * sqrt(sigma(t)² + 1), and the
scheduler receives eps = (x - D) / sigma, exactly what an eps-prediction UNet returns.
So the images equal the pipeline's, NFE is counted by the harness, and the same
schedulers run on the embedded analytic model (whose schedule is SD's).

Stochastic schedulers get one CPU generator per batch row, seeded with the cell's seed
and advanced past the initial noise: the generator a diffusers pipeline is given, after
it drew the latents, so a seed gives the pipeline's own image (Euler ancestral, DPM++ SDE,
DDPM included) and a cell's image does not depend on its batch. The adapter returns the scheduler's final
sample (for LCM its final denoised sample), which is what the pipeline decodes.
"""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass, field

import torch

from convergence.core.errors import ConvergenceError, NeedsOtherModel
from convergence.models.flow_matching import flow_sigma_to_ve

#: SD 1.x/2.x training schedule as diffusers configures it (matches models/vp.py); used
#: for models without a scheduler config of their own (the analytic model)
SD_LIKE_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "clip_sample": False, "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class SchedulerVariant:
    """A diffusers scheduler class with the config overrides a diffusers user would pass."""

    name: str
    #: a class of diffusers by name, or any ``SchedulerMixin`` subclass (an author's own)
    cls: str | type
    overrides: dict = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        return self.cls if isinstance(self.cls, str) else self.cls.__name__

    @property
    def is_flow(self) -> bool:
        return self.class_name.startswith("FlowMatch")


def base_config(ctx) -> dict:
    """The model's scheduler config, or an SD-like one that reproduces ``ctx.alphas_cumprod``
    (else its exact betas), so the schedulers also run on the analytic model."""
    if getattr(ctx, "scheduler_config", None):
        # keep ``_use_default_values``: like ``from_config(pipe.scheduler.config)``, settings
        # the model's config never named take the new scheduler's own defaults
        return {k: v for k, v in dict(ctx.scheduler_config).items()
                if not k.startswith("_") or k == "_use_default_values"}
    ac = ctx.alphas_cumprod
    if ac is None:
        raise ConvergenceError("diffusers schedulers need a model with a discrete (DDPM) "
                               "training schedule; this model has none")
    from diffusers import DDPMScheduler
    config = dict(SD_LIKE_CONFIG, num_train_timesteps=len(ac))
    sd = DDPMScheduler.from_config(config).alphas_cumprod.to(torch.float64)
    if not torch.allclose(sd, ac.to(torch.float64).cpu(), rtol=1e-5, atol=0):
        ac64 = ac.to(torch.float64).cpu()
        betas = 1 - ac64 / torch.cat([ac64.new_ones(1), ac64[:-1]])
        config.update(beta_schedule="linear", trained_betas=betas.tolist())
    return config


#: diffusers' lazy module is not thread-safe on first access; the runner builds schedulers
#: in several threads at once (cross-cell batching)
_IMPORT_LOCK = threading.Lock()


def build_scheduler(variant: SchedulerVariant, ctx):
    """A fresh scheduler of this variant for one batch (schedulers keep per-run state).

    VP schedulers need a model with a DDPM training schedule, flow-matching ones a flow
    model (no ``alphas_cumprod`` but a scheduler config): the other pairing is refused."""
    with _IMPORT_LOCK:
        return _build_scheduler(variant, ctx)


def _build_scheduler(variant: SchedulerVariant, ctx):
    import diffusers

    flow_model = ctx.alphas_cumprod is None and bool(ctx.scheduler_config)
    if variant.is_flow != flow_model:
        need = "a flow-matching model (SD3)" if variant.is_flow else "a DDPM-trained model"
        raise NeedsOtherModel(f"sampler {variant.name} needs {need}; use a k-diffusion sampler "
                              "(euler, heun, dpmpp_2m, ...) or the model's own scheduler")
    config = base_config(ctx)
    if not variant.is_flow:
        config.setdefault("clip_sample", False)  # latents are not in [-1, 1]
        config.update(prediction_type="epsilon")  # the adapter hands it eps
    config.update(variant.overrides)
    cls = getattr(diffusers, variant.cls) if isinstance(variant.cls, str) else variant.cls
    logging.getLogger("diffusers.configuration_utils").setLevel(logging.ERROR)
    return cls.from_config(config)


def t_to_sigma(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """VE sigma of a (possibly fractional) training timestep: log-sigma interpolation,
    the inverse of the k-diffusion/diffusers-model ``sigma_to_t``."""
    log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log().to(torch.float64).cpu()
    t = t.detach().to(torch.float64).cpu().clamp(0, len(log_sigmas) - 1)
    lo = t.floor().long()
    hi = t.ceil().long()
    w = t - lo
    return ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()


def pipeline_generators(seeds: list[int], shape: torch.Size) -> list[torch.Generator]:
    """One CPU generator per row in the state a pipeline's ``generator`` is in when the
    scheduler first draws: seeded with the cell's seed, the initial latents drawn
    (``Model.initial_noise`` draws them from the same stream)."""
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    for g in gens:
        torch.randn(shape, generator=g, dtype=torch.float32)
    return gens


def euler_timesteps(scheduler_config: dict, steps: int) -> torch.Tensor | None:
    """The training timesteps diffusers' Euler takes for ``steps`` on a model with this
    scheduler config (its ``timestep_spacing`` and ``steps_offset``), or None where that
    is "linspace", k-diffusion's own spacing, so K_EULER keeps k-diffusion's sigmas."""
    from diffusers import EulerDiscreteScheduler
    logging.getLogger("diffusers.configuration_utils").setLevel(logging.ERROR)
    config = {k: v for k, v in scheduler_config.items()
              if not k.startswith("_") or k == "_use_default_values"}
    sched = EulerDiscreteScheduler.from_config(config)
    if sched.config.timestep_spacing == "linspace":
        return None
    try:
        sched.set_timesteps(steps)
    except ValueError as e:
        raise ConvergenceError(f"the model's timestep spacing cannot take steps={steps}: {e}") from None
    return sched.timesteps.to(torch.float64)


def _vp_point(scheduler, latent, i, t, ac):
    """VP schedulers: the UNet input z at t, as the harness's (x, sigma), and eps from D."""
    z = scheduler.scale_model_input(latent, t)
    sigma = t_to_sigma(ac, t).to(latent.device, latent.dtype)
    xt = z * (sigma**2 + 1).sqrt()
    return xt, sigma, lambda denoised: (xt - denoised) / sigma


def _flow_point(scheduler, latent, i, t, ac):
    """Flow schedulers: x_t at flow time s as (x_t / (1 - s), s / (1 - s)), v from D."""
    s = scheduler.sigmas[i].to(torch.float64)
    sigma = flow_sigma_to_ve(s).to(latent.device, latent.dtype)
    xt = latent * (1 + sigma)
    return xt, sigma, lambda denoised: (latent - denoised) / s.to(latent.device, latent.dtype)


def _edm_point(scheduler, latent, i, t, ac):
    """EDM schedulers (``precondition_outputs``): the sample is x at the scheduler's sigma;
    the network output F with ``precondition_outputs(x, F, sigma) = D`` (affine in F)."""
    scheduler.scale_model_input(latent, t)  # sets the step index, as a pipeline does
    sigma = scheduler.sigmas[scheduler.step_index].to(latent.device, latent.dtype)
    zero = torch.zeros_like(latent)
    skip = scheduler.precondition_outputs(latent, zero, sigma)
    out = scheduler.precondition_outputs(zero, torch.ones_like(latent), sigma)
    return latent, sigma, lambda denoised: (denoised - skip) / out


def _point_of(variant: SchedulerVariant, scheduler):
    if variant.is_flow:
        return _flow_point
    return _edm_point if hasattr(scheduler, "precondition_outputs") else _vp_point


def adapter(name: str, cls: str | type | None = None, **overrides):
    """The sampler that drives the scheduler ``cls`` (a diffusers class name, default
    ``name``, or a ``SchedulerMixin`` subclass), built from the model's scheduler config
    with ``overrides``, on the harness's denoiser."""
    variant = SchedulerVariant(name, cls or name, overrides)

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, context=None):
        ctx = context
        extra_args = extra_args or {}
        scheduler = build_scheduler(variant, ctx)
        point = _point_of(variant, scheduler)
        try:
            scheduler.set_timesteps(ctx.steps, device=x.device)
        except ValueError as e:
            raise ConvergenceError(f"{variant.name} cannot take steps={ctx.steps}: {e}") from None
        ac = ctx.alphas_cumprod if ctx.alphas_cumprod is not None else getattr(
            scheduler, "alphas_cumprod", None)
        work_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        noise = x.to(work_dtype) / sigmas[0].to(x.device, work_dtype)  # x arrives as noise * sigma_0
        latent = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # flow: pure noise
        step_kwargs = {}
        params = inspect.signature(scheduler.step).parameters
        if "generator" in params:
            step_kwargs["generator"] = pipeline_generators(ctx.noise.seeds, x.shape[1:])
        ones = x.new_ones([x.shape[0]], dtype=work_dtype)
        out = None
        for i, t in enumerate(scheduler.timesteps):
            xt, sigma, model_output = point(scheduler, latent, i, t, ac)
            denoised = model(xt.to(x.dtype), sigma * ones, **extra_args).to(work_dtype)
            if callback is not None:
                callback({"x": xt, "i": i, "sigma": sigma, "denoised": denoised})
            out = scheduler.step(model_output(denoised), t, latent, return_dict=True, **step_kwargs)
            latent = out.prev_sample.to(work_dtype)
        final = getattr(out, "denoised", None)  # LCM: the pipeline decodes the denoised sample
        result = final if final is not None else latent
        return result.to(x.dtype)

    sample.variant = variant  # the class and options it runs (tests, the listing)
    sample.__name__ = f"sample_{name}"
    return sample
