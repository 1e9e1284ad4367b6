"""diffusers' schedulers as samplers, on the analytic model (whose schedule is SD's)."""

from __future__ import annotations

import pytest
import torch

from convergence.plan import Cell
from convergence.runner import sample_batch
from convergence.samplers.diffusers_schedulers import EQUIVALENTS, VARIANTS
from convergence.samplers.registry import available_samplers, resolve_sampler

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
    specs = available_samplers()
    for v in VARIANTS:
        assert specs[v.name].family == "diffusers"
        assert specs[v.name].stochastic == v.stochastic
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


def test_ddim_scheduler_agrees_with_compvis_ddim(model32):
    """Same timesteps (1 + k*(1000//n)), same final ā_0; only the start differs (CompVis/
    diffusers z_T = noise vs x = noise * sigma_0) - a 0.2 % scale of the initial noise."""
    ours = sample_batch(model32, _cells("ddim", steps=20, schedule="ddim_uniform"))
    theirs = sample_batch(model32, _cells("DDIMScheduler", steps=20))
    assert float((ours.samples - theirs.samples).abs().max()) < 0.02


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
