"""Sampler registry, schedules, NFE counting and per-cell noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from k_diffusion import sampling as ks

from convergence.core.errors import ConvergenceError
from convergence.models.base import CountingDenoiser, GuidedDenoiser
from convergence.run.plan import Cell
from convergence.run.runner import sample_batch
from convergence.samplers.noise import CellNoise
from convergence.samplers.schedules import get_sigmas
from convergence.samplers.spec import SamplingContext, available_samplers, resolve_sampler

GUIDE = {"K_EULER": "euler", "K_LMS": "lms", "K_HEUN": "heun", "K_DPM_2": "dpm_2",
         "K_DPM_2_A": "dpm_2_ancestral", "K_EULER_A": "euler_ancestral", "DDIM": "ddim",
         "PLMS": "plms"}
KDIFFUSION = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
              "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde",
              "dpmpp_3m_sde"]


def cell(sampler, steps=6, seed=1, topic="food", schedule="karras", cfg=7.5, size=32):
    return Cell("analytic", "h", topic, "p", seed, sampler, schedule, steps, cfg, size, size)


def test_every_kdiffusion_sampler_and_the_guide_names_resolve():
    names = set(available_samplers())
    assert set(KDIFFUSION) <= names and {"ddim", "plms"} <= names
    for alias, name in GUIDE.items():
        assert resolve_sampler(alias).spec.name == name


@pytest.mark.parametrize("alias,name,schedule", [
    ("DPM++ 2M Karras", "dpmpp_2m", "karras"), ("Euler a", "euler_ancestral", None),
    ("DPM++ 2M SDE Karras", "dpmpp_2m_sde", "karras"), ("dpmpp_2m", "dpmpp_2m", None),
    ("DPM2 a Karras", "a1111:DPM2 a", "karras"), ("LMS", "lms", None),
    ("k_euler_a", "euler_ancestral", None), ("DPM++ SDE", "dpmpp_sde", None),
])
def test_a1111_and_comfyui_names(alias, name, schedule):
    r = resolve_sampler(alias)
    assert (r.spec.name, r.schedule) == (name, schedule)


def test_unknown_sampler_lists_close_matches():
    with pytest.raises(ConvergenceError, match=r"unknown sampler 'eulr'.*euler"):
        resolve_sampler("eulr")


@pytest.mark.parametrize("name", ["karras", "exponential", "polyexponential", "discrete"])
def test_schedules_are_decreasing_and_end_at_zero(model32, name):
    s = get_sigmas(model32, name, 12)
    assert len(s) == 13 and s[-1] == 0 and (s[:-1] > 0).all()
    assert (s[1:] < s[:-1]).all()
    assert s[0] == pytest.approx(model32.sigma_max) and s[-2] == pytest.approx(model32.sigma_min)


def test_ddim_uniform_is_compvis_timesteps(model32):
    s = get_sigmas(model32, "ddim_uniform", 10)
    sig = ((1 - model32.alphas_cumprod) / model32.alphas_cumprod) ** 0.5
    expected_t = [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    torch.testing.assert_close(s[:-1], sig[expected_t])
    assert s[-1] == pytest.approx(float(sig[0]))


def test_steps_below_one_is_an_error(model32):
    with pytest.raises(ConvergenceError, match="steps must be >= 1, got 0"):
        get_sigmas(model32, "karras", 0)


@pytest.mark.parametrize("name,kfn", [("euler", ks.sample_euler), ("heun", ks.sample_heun),
                                      ("lms", ks.sample_lms), ("dpmpp_2m", ks.sample_dpmpp_2m),
                                      ("dpm_2", ks.sample_dpm_2)])
def test_harness_equals_kdiffusion_called_directly(model32, name, kfn):
    """A registered sampler through the harness == the k-diffusion function on the same
    model and sigmas."""
    c = cell(name, steps=7)
    got = sample_batch(model32, [c]).samples
    sigmas = get_sigmas(model32, "karras", 7)
    x = model32.initial_noise([1], 32, 32) * sigmas[0]
    cond = model32.encode_prompts(["p"], ["food"])
    den = GuidedDenoiser(model32)
    want = kfn(den, x, sigmas, extra_args={"conditioning": cond, "cfg_scale": 7.5}, disable=True)
    assert torch.equal(got, want)


def test_ancestral_equals_kdiffusion_with_the_same_noise(model32):
    c = cell("euler_ancestral", steps=7, seed=9)
    got = sample_batch(model32, [c]).samples
    sigmas = get_sigmas(model32, "karras", 7)
    x = model32.initial_noise([9], 32, 32) * sigmas[0]
    cond = model32.encode_prompts(["p"], ["food"])
    want = ks.sample_euler_ancestral(
        GuidedDenoiser(model32), x, sigmas, disable=True,
        extra_args={"conditioning": cond, "cfg_scale": 7.5},
        noise_sampler=CellNoise([9]).gaussian(x))
    assert torch.equal(got, want)


@pytest.mark.parametrize("name,nfe", [
    ("euler", lambda n: n), ("lms", lambda n: n), ("dpmpp_2m", lambda n: n),
    ("ddim", lambda n: n), ("euler_ancestral", lambda n: n),
    # second-order samplers: 2 calls per step, but the last step to sigma = 0 is an Euler step
    ("heun", lambda n: 2 * n - 1), ("dpm_2", lambda n: 2 * n - 1),
    # PLMS' first step is a 2nd-order step with one extra call
    ("plms", lambda n: n + 1), ("dpmpp_sde", lambda n: 2 * n - 1),
])
@pytest.mark.parametrize("steps", [5, 12])
def test_nfe_per_step_is_measured(model32, name, nfe, steps):
    res = sample_batch(model32, [cell(name, steps=steps)])
    assert res.nfe == nfe(steps)
    # CFG evaluates two rows per image and call
    assert res.model_evals == 2 * res.nfe


def test_cfg_one_evaluates_one_row(model32):
    res = sample_batch(model32, [cell("euler", steps=5, cfg=1.0)])
    assert res.nfe == 5 and res.model_evals == 5


@pytest.mark.parametrize("name", [n for n in KDIFFUSION if n != "dpm_adaptive"] + ["ddim", "plms"])
def test_cell_is_independent_of_its_batch(model32, name):
    """Same cell alone and inside a batch of other prompts and seeds: identical floats
    (the analytic model's denoiser is row-independent to the bit, models/fixed_order.py)."""
    target = cell(name, steps=5, seed=11, topic="people")
    others = [cell(name, steps=5, seed=s, topic=t) for s, t in ((1, "food"), (2, "anime"))]
    alone = sample_batch(model32, [target])
    batched = sample_batch(model32, [others[0], target, others[1]])
    assert np.array_equal(alone.images[0], batched.images[1])
    assert torch.equal(alone.samples[0], batched.samples[1])


@pytest.mark.parametrize("name", ["euler_ancestral", "dpm_2_ancestral", "dpmpp_sde", "dpmpp_2m_sde"])
def test_stochastic_samplers_depend_on_the_seed_only(model32, name):
    a = sample_batch(model32, [cell(name, seed=3)]).images[0]
    b = sample_batch(model32, [cell(name, seed=3)]).images[0]
    c = sample_batch(model32, [cell(name, seed=4)]).images[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_counting_denoiser_counts_calls(model32):
    den = CountingDenoiser(GuidedDenoiser(model32))
    cond = model32.encode_prompts(["p"], ["food"])
    x = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
    for _ in range(3):
        den(x, torch.tensor([1.0], dtype=torch.float64), conditioning=cond, cfg_scale=2.0)
    assert den.calls == 3 and den.rows_evaluated == 6 and den.model_seconds > 0


def test_sampling_context_carries_options(model32):
    ctx = SamplingContext(noise=CellNoise([1]), steps=4, options={"rtol": 0.01})
    assert ctx.options["rtol"] == 0.01


def test_row_coupled_samplers_run_one_cell_per_batch():
    from convergence.run.plan import batches
    cells = [cell("dpm_adaptive", seed=s) for s in range(3)] + [cell("euler", seed=s) for s in range(3)]
    sizes = sorted(len(b) for b in batches(cells, 8))
    assert sizes == [1, 1, 1, 3]
