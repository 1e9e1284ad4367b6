"""Harness == the diffusers pipeline itself, per model family, on tiny random pipelines.

For SD 1.x, SD 2.x (v-prediction) and SDXL (two text encoders, pooled embeddings,
size/crop conditioning) a diffusers scheduler driven through the harness with a seed
gives the pipeline's own image for that seed, stochastic schedulers included (the
pipeline's generator, after it drew the latents, drives their step noise).

Tolerance: tiny_pipeline.assert_same_image (latents within float32 reduction-order error,
decoded images within one 8-bit level). Measured on these pipelines (fp32, CPU, this
machine), OMP_NUM_THREADS=1 and 2 threads alike: decoded float images differ by at most
5e-6, latents by 5e-6 of their largest value.
"""

from __future__ import annotations

import pytest
import torch
from tiny_pipeline import IMAGE_SIZE, assert_same_image, save_tiny_pipeline

PROMPT = "a hamburger with a bowl of french fries"
SEED = 4053222918
CFG = 7.5

#: harness sampler -> (diffusers class, overrides a diffusers user would pass)
SCHEDULERS = {
    "DDIMScheduler": ("DDIMScheduler", {}),
    "EulerDiscreteScheduler": ("EulerDiscreteScheduler", {}),
    "EulerAncestralDiscreteScheduler": ("EulerAncestralDiscreteScheduler", {}),
    "DPMSolverMultistepScheduler_SDE": ("DPMSolverMultistepScheduler",
                                        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
}
CASES = [("sd", s) for s in SCHEDULERS] + [
    ("sd2v", "DDIMScheduler"), ("sd2v", "EulerDiscreteScheduler"),
    ("sd2v", "EulerAncestralDiscreteScheduler"),
    ("sdxl", "DDIMScheduler"), ("sdxl", "EulerDiscreteScheduler"),
    ("sdxl", "DPMSolverMultistepScheduler_SDE")]


@pytest.fixture(scope="module")
def family_model(tmp_path_factory):
    """family -> a loaded tiny model of that family (built once per module)."""
    from convergence.config import ModelConfig
    from convergence.models import build_model
    cache = {}

    def get(family):
        if family not in cache:
            path = save_tiny_pipeline(family, tmp_path_factory.mktemp(family) / family)
            cache[family] = build_model(ModelConfig(name="diffusers", path=str(path),
                                                    device="cpu"), IMAGE_SIZE, IMAGE_SIZE)
        return cache[family]

    return get


def _cells(sampler, schedule, steps, seed=SEED):
    from convergence.plan import Cell
    return [Cell("diffusers", "h", "food", PROMPT, seed, sampler, schedule, steps, CFG,
                 IMAGE_SIZE, IMAGE_SIZE)]


def pipeline_latents(model, scheduler_cls, steps, latents=None, **config):
    """The loaded pipeline with one of diffusers' schedulers swapped in by ``from_config``."""
    import diffusers
    pipe = model.pipe
    pipe.scheduler = getattr(diffusers, scheduler_cls).from_config(model.scheduler_config, **config)
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=CFG, height=IMAGE_SIZE,
                width=IMAGE_SIZE, generator=torch.Generator("cpu").manual_seed(SEED),
                latents=latents, output_type="latent").images


@pytest.mark.parametrize("family, sampler", CASES)
def test_scheduler_through_harness_equals_pipeline(family_model, family, sampler):
    from convergence.runner import sample_batch
    model = family_model(family)
    steps = 7
    res = sample_batch(model, _cells(sampler, "discrete", steps))
    cls, overrides = SCHEDULERS[sampler]
    ref = pipeline_latents(model, cls, steps, **overrides)
    assert res.nfe == steps and res.model_evals == 2 * steps
    assert_same_image(model, res.samples, ref)


def test_stochastic_scheduler_needs_the_pipelines_noise(family_model):
    """The equality above is not luck: another seed's step noise gives another image."""
    from convergence.runner import sample_batch
    model = family_model("sd")
    ours = sample_batch(model, _cells("EulerAncestralDiscreteScheduler", "discrete", 7)).samples
    other = sample_batch(model, _cells("EulerAncestralDiscreteScheduler", "discrete", 7,
                                       seed=SEED + 1)).samples
    ref = pipeline_latents(model, "EulerAncestralDiscreteScheduler", 7)
    assert_same_image(model, ours, ref)
    assert float((other - ref).abs().max()) > 0.1 * float(ref.abs().max())


def test_k_euler_takes_the_models_timestep_spacing(family_model):
    """SDXL ships "leading" timesteps: the guide's K_EULER (k-diffusion euler, ``discrete``)
    takes diffusers Euler's sigmas there, and with the start made equal (k-diffusion:
    noise * sigma_0; diffusers, leading: noise * sqrt(sigma_0² + 1)) the same image."""
    import math

    from diffusers import EulerDiscreteScheduler

    from convergence.runner import sample_batch
    from convergence.samplers.schedules import get_sigmas
    model = family_model("sdxl")
    steps = 7
    sig = get_sigmas(model, "discrete", steps)
    sched = EulerDiscreteScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(steps)
    assert sched.config.timestep_spacing == "leading"
    assert torch.allclose(sig.float(), sched.sigmas, rtol=1e-6, atol=0)
    res = sample_batch(model, _cells("K_EULER", "discrete", steps))
    s0 = float(sig[0])
    noise = torch.randn((1, *model.latent_shape(IMAGE_SIZE, IMAGE_SIZE)),
                        generator=torch.Generator("cpu").manual_seed(SEED))
    ref = pipeline_latents(model, "EulerDiscreteScheduler", steps,
                           latents=noise * s0 / math.sqrt(s0**2 + 1))
    assert_same_image(model, res.samples, ref)


@pytest.mark.parametrize("family", ["sd2v", "sdxl"])
def test_kdiffusion_samplers_run_and_count_nfe(family_model, family):
    """Every family runs the k-diffusion samplers; NFE per step as the method says."""
    from convergence.runner import sample_batch
    model = family_model(family)
    for sampler, schedule, nfe in (("heun", "karras", 2 * 4 - 1), ("dpmpp_2m", "karras", 4),
                                   ("euler_ancestral", "discrete", 4), ("DDIM", "ddim_uniform", 4)):
        res = sample_batch(model, _cells(sampler, schedule, 4))
        assert res.nfe == nfe, sampler
        assert torch.isfinite(res.samples).all() and res.images.std() > 1, sampler


def test_sdxl_conditions_on_pooled_embeddings_and_size(family_model):
    """SDXL's added conditioning reaches the UNet: other time ids, another output."""
    model = family_model("sdxl")
    cond = model.encode_prompts([PROMPT], ["food"])
    assert set(cond.cond) == {"encoder_hidden_states", "text_embeds", "time_ids"}
    assert cond.cond["time_ids"].tolist() == [[IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE]]
    assert float(cond.uncond["text_embeds"].abs().max()) == 0  # force_zeros_for_empty_prompt
    x = torch.randn((1, *model.latent_shape(IMAGE_SIZE, IMAGE_SIZE)),
                    generator=torch.Generator("cpu").manual_seed(0)) * 3
    sigma = torch.tensor([3.0])
    base = model.denoise(x, sigma, cond.cond)
    moved = dict(cond.cond, time_ids=cond.cond["time_ids"] * 2)
    assert float((model.denoise(x, sigma, moved) - base).abs().max()) > 1e-4
