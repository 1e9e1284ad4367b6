"""diffusers' schedulers as samplers, on the analytic model (whose schedule is SD's)."""

from __future__ import annotations

import pytest
import torch

from convergence.run.plan import Cell
from convergence.run.runner import sample_batch
from convergence.samplers.spec import available_samplers, resolve_sampler

#: the DDPM schedulers (flow-matching ones need a flow model:
#: tests/integration/test_diffusers_pipelines.py)
VARIANTS = tuple(s for s in available_samplers().values()
                 if s.family == "diffusers" and not s.name.startswith("FlowMatch"))
#: the same method in the k-diffusion / CompVis family -> its diffusers scheduler
EQUIVALENTS = {
    "ddim": "DDIMScheduler", "plms": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler", "heun": "HeunDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler", "dpm_2_ancestral": "KDPM2AncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_sde": "DPMSolverMultistepScheduler_SDE",
}
#: the schedulers that draw noise between steps
STOCHASTIC = {"DDPMScheduler", "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
              "DPMSolverMultistepScheduler_SDE", "LCMScheduler", "TCDScheduler"}
SEEDS = (11, 12)
STEPS = 6


def _cells(sampler, steps=STEPS, seeds=SEEDS, schedule="discrete", cfg=1.0):
    return [Cell("analytic", "h", "food", "p", s, sampler, schedule, steps, cfg, 32, 32)
            for s in seeds]


#: NFE for STEPS steps, measured by the counting denoiser and checked against the method
EXPECTED_NFE = {"HeunDiscreteScheduler": 2 * STEPS - 1, "KDPM2DiscreteScheduler": 2 * STEPS - 1,
                "KDPM2AncestralDiscreteScheduler": 2 * STEPS - 1, "PNDMScheduler": STEPS + 1}


@pytest.fixture(scope="module")
def runs(model32):
    return {v.name: sample_batch(model32, _cells(v.name)) for v in VARIANTS}


def test_every_scheduler_is_registered_with_its_class_name():
    assert len(VARIANTS) == 21
    for v in VARIANTS:
        assert v.stochastic == (v.name in STOCHASTIC), v.name
    for alias, name in [("uni_pc", "UniPCMultistepScheduler_bh1"),
                        ("uni_pc_bh2", "UniPCMultistepScheduler"),
                        ("lcm", "LCMScheduler"), ("ddpm", "DDPMScheduler"),
                        ("eulerdiscretescheduler", "EulerDiscreteScheduler")]:
        assert resolve_sampler(alias).spec.name == name
    # names that already belong to k-diffusion / CompVis stay theirs
    assert resolve_sampler("K_EULER").spec.family == "k-diffusion"
    assert resolve_sampler("DDIM").spec.family == "compvis"


def test_sampler_backend_equivalents():
    for name, scheduler in EQUIVALENTS.items():
        assert resolve_sampler(name, backend="diffusers").spec.name == scheduler
        assert resolve_sampler(name).spec.name == name
    assert resolve_sampler("K_DPM_2_A", backend="diffusers").spec.name == \
        "KDPM2AncestralDiscreteScheduler"
    # an A1111 name that fixes the schedule keeps the k-diffusion sampler
    assert resolve_sampler("Euler Karras", backend="diffusers").spec.name == "euler"


def test_each_scheduler_runs_and_nfe_is_measured(runs):
    for v in VARIANTS:
        res = runs[v.name]
        assert torch.isfinite(res.samples).all(), v.name
        assert res.nfe == EXPECTED_NFE.get(v.name, STEPS), v.name
        assert res.images.shape == (len(SEEDS), 32, 32, 3)
        # a real image of the food topic, not noise: close to the data range
        assert float(res.samples.abs().max()) < 3, v.name


def test_all_reproduce_and_are_batch_independent(model32, runs):
    """Same cell alone or in a batch: same image (stochastic ones draw per-cell noise)."""
    for v in VARIANTS:
        alone = sample_batch(model32, _cells(v.name, seeds=SEEDS[1:]))
        assert torch.allclose(alone.samples[0], runs[v.name].samples[1], atol=1e-6), v.name


def test_stochastic_ones_use_per_cell_noise(runs):
    for v in VARIANTS:
        if v.stochastic:
            a, b = runs[v.name].samples
            assert (a - b).abs().max() > 1e-3, v.name  # different seeds, different noise


def test_ddim_scheduler_equals_compvis_ddim(model32):
    """Same timesteps (1 + k*(1000//n)), same start (z_T = noise), same final ā_0; the
    CompVis sampler returns the VE sample there, x = z_0 / sqrt(ā_0). diffusers keeps its
    ā_t in float32: measured difference 4.7e-7 (|x| <= 1), bound 5e-6; before the start
    was CompVis's it was 1e-2."""
    from convergence.samplers.schedules import get_sigmas
    ours = sample_batch(model32, _cells("ddim", steps=20, schedule="ddim_uniform"))
    theirs = sample_batch(model32, _cells("DDIMScheduler", steps=20))
    s_end = get_sigmas(model32, "ddim_uniform", 20)[-1]
    diff = ours.samples / (1 + s_end**2).sqrt() - theirs.samples
    assert float(diff.abs().max()) < 5e-6


def test_euler_scheduler_equals_kdiffusion_euler(model32):
    """diffusers Euler (linspace, the SD-like default) == k-diffusion euler on 'discrete'."""
    ours = sample_batch(model32, _cells("euler", steps=10))
    theirs = sample_batch(model32, _cells("EulerDiscreteScheduler", steps=10))
    assert float((ours.samples - theirs.samples).abs().max()) < 1e-5


def test_converges_with_steps(model32):
    """More steps move DPM-Solver++ towards its own fine-step result (first-order error gone)."""
    fine = sample_batch(model32, _cells("DPMSolverMultistepScheduler", steps=50, seeds=(3,)))
    errs = [float((sample_batch(model32, _cells("DPMSolverMultistepScheduler", steps=n,
                                                seeds=(3,))).samples - fine.samples).abs().max())
            for n in (5, 10, 20)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("sampler", ["ddim", "plms"])
def test_compvis_start_is_noise_times_sqrt_one_plus_sigma0_squared(sampler):
    """CompVis and diffusers start DDIM/PLMS at z_T = noise, i.e. x = noise*sqrt(1 + sigma_0²)
    in the harness's VE scale. Checked by hand: SD's betas summed up here from their
    definition, and a denoiser that returns 0, under which every DDIM/PLMS step scales x
    by sigma_next / sigma, so the result is noise * sqrt(1 + sigma_0²) * sigma_end / sigma_0."""
    import math

    from convergence.samplers.compvis import sample_ddim, sample_plms
    steps, T = 4, 1000
    abar, prod = [], 1.0
    for i in range(T):  # "scaled_linear": betas linear in sqrt(beta)
        b = (math.sqrt(0.00085) + i / (T - 1) * (math.sqrt(0.012) - math.sqrt(0.00085))) ** 2
        prod *= 1 - b
        abar.append(prod)
    t0 = 1 + (steps - 1) * (T // steps)  # CompVis: timesteps 1, 251, 501, 751
    sigma0, sigma_end = (math.sqrt((1 - abar[t]) / abar[t]) for t in (t0, 0))
    start = math.sqrt(1 + sigma0**2)
    assert start / sigma0 - 1 == pytest.approx(0.029, abs=5e-4)  # 2.9 % above noise * sigma_0
    sigmas = torch.tensor([math.sqrt((1 - abar[t]) / abar[t]) for t in (751, 501, 251, 1)]
                          + [sigma_end], dtype=torch.float64)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fn = {"ddim": sample_ddim, "plms": sample_plms}[sampler]
    out = fn(lambda x, s: torch.zeros_like(x), noise * sigmas[0], sigmas, {}, None)
    assert torch.allclose(out, noise * start * sigma_end / sigma0, rtol=1e-12, atol=0)
