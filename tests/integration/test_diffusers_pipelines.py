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
#: rerun under forced kernel variants: one deterministic and one stochastic scheduler on SD
PORTABLE_CASES = {("sd", "DDIMScheduler"), ("sd", "DPMSolverMultistepScheduler_SDE")}


@pytest.fixture(scope="module")
def family_model(tmp_path_factory):
    """family -> a loaded tiny model of that family (built once per module)."""
    from convergence.config.schema import ModelConfig
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
    from convergence.run.plan import Cell
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


@pytest.mark.parametrize("family, sampler", [
    pytest.param(*case, marks=[pytest.mark.portable] if case in PORTABLE_CASES else [])
    for case in CASES])
def test_scheduler_through_harness_equals_pipeline(family_model, family, sampler):
    from convergence.run.runner import sample_batch
    model = family_model(family)
    steps = 7
    res = sample_batch(model, _cells(sampler, "discrete", steps))
    cls, overrides = SCHEDULERS[sampler]
    ref = pipeline_latents(model, cls, steps, **overrides)
    assert res.nfe == steps and res.model_evals == 2 * steps
    assert_same_image(model, res.samples, ref)


def test_stochastic_scheduler_needs_the_pipelines_noise(family_model):
    """The equality above is not luck: another seed's step noise gives another image."""
    from convergence.run.runner import sample_batch
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

    from convergence.run.runner import sample_batch
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
    from convergence.run.runner import sample_batch
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


def _record_timesteps(monkeypatch, net, replace=False):
    """Record the timesteps the network is called with (optionally without running it)."""
    seen = []
    orig = net.forward

    def forward(*a, **kw):
        sample = kw.get("hidden_states", a[0] if a else None)
        timestep = kw["timestep"] if "timestep" in kw else a[1]
        seen.append(torch.as_tensor(timestep).flatten()[0].item())
        if replace:
            return (torch.zeros_like(sample),)
        return orig(*a, **kw)

    monkeypatch.setattr(net, "forward", forward)
    return seen


def test_unet_sees_the_pipelines_integer_timesteps_in_fp16(family_model, monkeypatch):
    """With a float16 network the samplers' sigma stays float32, so the UNet is called at
    DDIMScheduler's integer timesteps (fp16 sigma made 801 read as 800.93)."""
    import diffusers

    from convergence.run.runner import sample_batch
    model = family_model("sd")
    seen = _record_timesteps(monkeypatch, model.unet, replace=True)
    monkeypatch.setattr(model, "dtype", torch.float16)
    sample_batch(model, _cells("DDIMScheduler", "discrete", 10))
    sched = diffusers.DDIMScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(10)
    assert seen == [float(t) for t in sched.timesteps]
    assert seen[0] == 901.0


# -- flow matching (SD3) -------------------------------------------------------------------

def test_sd3_loads_as_a_flow_model(family_model):
    from convergence.models.flow_matching import FlowMatchModel
    model = family_model("sd3")
    assert isinstance(model, FlowMatchModel) and model.alphas_cumprod is None
    assert model.pipe.text_encoder_3 is None  # T5 left out
    assert model.latent_shape(IMAGE_SIZE, IMAGE_SIZE) == (16, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    # shift 3 on the training grid t = i / 1000: sigma = t / (1 - t) at its ends. diffusers
    # keeps the grid in float32, and 1 - t = 3.3e-4 at the top: 2996.54 there, not 2997.00
    t_lo, t_hi = (3 * t / (1 + 2 * t) for t in (1 / 1000, 999 / 1000))
    assert model.sigma_min == pytest.approx(t_lo / (1 - t_lo), rel=1e-6)
    assert model.sigma_max == pytest.approx(t_hi / (1 - t_hi), rel=2e-4)
    assert model.fingerprint()["schedule"]["shift"] == 3.0


def test_flow_match_euler_through_harness_equals_sd3_pipeline(family_model, monkeypatch):
    """Same image, and the transformer sees exactly the pipeline's timesteps (t = 1 too)."""
    from convergence.run.runner import sample_batch
    model = family_model("sd3")
    steps = 7
    seen = _record_timesteps(monkeypatch, model.net)
    res = sample_batch(model, _cells("FlowMatchEulerDiscreteScheduler", "discrete", steps))
    ours_t = list(seen)
    seen.clear()
    ref = pipeline_latents(model, "FlowMatchEulerDiscreteScheduler", steps)
    assert ours_t == seen and ours_t[0] == 1000.0
    assert res.nfe == steps
    assert_same_image(model, res.samples, ref)


def test_flow_shift_schedule_is_the_pipelines(family_model):
    """``flow_shift`` = the scheduler's shifted flow times as sigma = t / (1 - t); its first
    (t = 1) starts at the largest finite sigma. k-diffusion euler on it is then the
    pipeline's Euler from x_t = noise * sigma_max / (1 + sigma_max), 3e-4 below pure noise:
    measured 4.6e-4 of the largest latent apart, bound 2e-3."""
    import diffusers

    from convergence.run.runner import sample_batch
    from convergence.samplers.schedules import get_sigmas
    model = family_model("sd3")
    steps = 7
    sig = get_sigmas(model, "flow_shift", steps)
    assert torch.equal(sig, get_sigmas(model, "discrete", steps))  # the model's own
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(steps)
    t = sched.sigmas.double()
    assert t[0] == 1 and sig[0] == model.sigma_max
    assert torch.allclose(sig[1:], t[1:] / (1 - t[1:]), rtol=1e-12, atol=0)
    res = sample_batch(model, _cells("euler", "flow_shift", steps))
    ref = pipeline_latents(model, "FlowMatchEulerDiscreteScheduler", steps)
    assert float((res.samples - ref).abs().max()) < 2e-3 * float(ref.abs().max())


def test_kdiffusion_samplers_run_on_sd3(family_model):
    from convergence.run.runner import sample_batch
    model = family_model("sd3")
    for sampler, schedule, nfe in (("heun", "karras", 2 * 4 - 1), ("dpmpp_2m", "flow_shift", 4),
                                   ("euler_ancestral", "flow_shift", 4),
                                   ("dpmpp_2m_sde", "exponential", 4)):
        res = sample_batch(model, _cells(sampler, schedule, 4))
        assert res.nfe == nfe, sampler
        assert torch.isfinite(res.samples).all() and res.images.std() > 1, sampler


@pytest.mark.parametrize("family, sampler, schedule, message", [
    ("sd3", "DDIMScheduler", "discrete", "needs a DDPM-trained model"),
    ("sd3", "DDIM", "ddim_uniform", r"no discrete \(DDPM\) training schedule"),
    ("sd", "FlowMatchEulerDiscreteScheduler", "discrete", "needs a flow-matching model"),
    ("sd", "euler", "flow_shift", "flow_shift is a flow-matching model's own")])
def test_wrong_family_pairings_are_one_line_errors(family_model, family, sampler, schedule,
                                                   message):
    from convergence.core.errors import ConvergenceError
    from convergence.run.runner import sample_batch
    with pytest.raises(ConvergenceError, match=message):
        sample_batch(family_model(family), _cells(sampler, schedule, 4))


@pytest.mark.parametrize("family, study, samplers", [
    ("sd2v", "invoke_guide_sd2", ["DDIM", "K_EULER_A"]),
    ("sdxl", "invoke_guide_sdxl", ["K_EULER", "K_HEUN"]),
    ("sd3", "invoke_guide_sd3", ["FlowMatchEulerDiscreteScheduler", "dpmpp_2m"])])
def test_family_study_run_analyze_report(family_model, tmp_path, capsys, family, study, samplers):
    """Each family's study config through `convergence all` (run, analyze, report) on
    its tiny pipeline: the guide's five prompts, two samplers, two step counts."""
    import pandas as pd
    from inprocess import run_main

    from convergence.core.store import Store
    path = family_model(family).path
    results = tmp_path / "results"
    code, out, err = run_main(
        capsys, "all", "model=diffusers", f"model.path={path}", "model.device=cpu",
        f"study={study}", f"results_dir={results}", f"samplers=[{','.join(samplers)}]",
        "steps=[3,6]", f"width={IMAGE_SIZE}", f"height={IMAGE_SIZE}", "progress=false",
        "threads=1")
    assert code == 0, err[-2000:]
    assert "ran 20 cells" in out
    table = pd.read_parquet(Store(results / study).table_path)
    assert len(table) == 20 and table.nfe.min() >= 3
    assert (results / study / "report" / "index.html").is_file()
    assert (results / study / "keypoints.csv").is_file()
