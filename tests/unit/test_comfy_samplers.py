"""Today's ComfyUI samplers (samplers/comfy.py): each keeps its claims on the analytic
model, where the exact limit is known, and stochastic ones depend on their cell only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convergence.analysis.metrics import rmse
from convergence.analysis.rates import asymptotic_fit
from convergence.analysis.references import denoise
from convergence.models.analytic import exact_solution
from convergence.models.base import GuidedDenoiser
from convergence.run.plan import Cell
from convergence.run.runner import cell_metadata, sample_batch
from convergence.samplers import integrators as itg
from convergence.samplers.comfy import sample_euler_cfg_pp
from convergence.samplers.spec import available_samplers, resolve_sampler

SEEDS = [1]
COMFY = {n: s for n, s in available_samplers().items() if s.family == "comfyui"}


def cell(sampler, steps, seed=1, topic="food", cfg=1.0):
    return Cell("analytic", "h", topic, "p", seed, sampler, "karras", steps, cfg, 32, 32)


@pytest.mark.parametrize("name", list(COMFY))
def test_measured_nfe_equals_the_claim(model32, name):
    for steps in (3, 7):
        assert sample_batch(model32, [cell(name, steps)]).nfe == COMFY[name].claimed_nfe(steps)


@pytest.fixture(scope="module")
def exact_denoised(model32):
    """D(x(sigma_min)) of the exact ODE from each seed's start (the Karras schedule's
    sigma_max and sigma_min do not depend on the step count)."""
    m = cell_metadata(model32, "euler", "karras", 8)
    s0, smin = m["sigma_start"], m["sigma_min"]
    x0 = model32.initial_noise(SEEDS, 32, 32).double() * s0
    cond = model32.encode_prompts(["p"] * len(SEEDS), ["food"] * len(SEEDS))
    x_min = exact_solution(model32, x0, s0, smin, cond, 1.0)
    return denoise(model32, x_min, smin, cond, 1.0).numpy()


# Step ranges where successive doublings' slopes have settled within 0.3 of the claim
# (measured with 2 seeds, steps 4..512; the table is in docs/samplers.md). The
# multistep methods in sigma (ipndm*, deis, er_sde as an ODE) start with an Euler step whose
# O(h^2) error is never damped: global order 2, approached from above (deis: 2.55 at
# 16-32, 2.26 at 128-256, 2.14 at 256-512), hence their late ranges. Each order is judged
# by the analysis' one rule (rates.order_accepted, via asymptotic_fit).
ORDERS = [
    ("euler_cfg_pp", 1, [16, 32, 64], {}),
    ("dpmpp_2m_cfg_pp", 2, [16, 32, 64], {}),
    ("ipndm", 2, [32, 64, 128], {}),
    ("ipndm_v", 2, [64, 128, 256], {}),
    ("deis", 2, [128, 256, 512], {}),
    ("res_multistep", 2, [16, 32, 64], {}),
    ("res_multistep_cfg_pp", 2, [16, 32, 64], {}),
    ("gradient_estimation", 1, [32, 64, 128], {}),
    ("gradient_estimation_cfg_pp", 1, [32, 64, 128], {}),
    ("heunpp2", 1, [8, 16, 32], {}),
    # the SDE solvers with the noise switched off are ODE solvers of the paper's order
    ("seeds_2", 2, [8, 16, 32], {"eta": 0.0}),
    ("seeds_3", 3, [16, 32, 64], {"eta": 0.0}),
    ("er_sde", 2, [32, 64, 128], {"noise_scale": itg.NoiseScale.power(1.0)}),
]


#: still drifting over their range: the rule refuses the order (the last two slopes differ
#: by 0.12-0.18), and the slopes fall towards the claim from above (measured: ipndm_v 2.29,
#: 2.11; deis 2.32, 2.18; res_multistep(_cfg_pp) 2.24, 2.12; er_sde 2.28, 2.13)
DRIFTING = {"ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "er_sde"}


def _order(model, name, steps, options, limit) -> dict:
    """asymptotic_fit of the error against the exact limit, over NFE."""
    nfe, err = [], []
    for n in steps:
        r = sample_batch(model, [cell(name, n, seed=s) for s in SEEDS], options)
        nfe.append(r.nfe)
        err.append(float(np.median(rmse(r.samples.numpy(), limit))))
    return {**asymptotic_fit([(np.array(nfe, float), np.array(err))], math.inf), "err": err}


@pytest.mark.parametrize("name,order,steps,options", ORDERS, ids=[o[0] for o in ORDERS])
def test_empirical_order_matches_the_claim(model32, exact_denoised, name, order, steps, options):
    """Accepted by the rule and within 0.25 of the claim (as `convergence check` judges);
    for the drifting ones, refused, approaching the claim from above, the fit within 0.3."""
    claimed = COMFY[name].order
    assert claimed == order or (claimed is None and options), (name, claimed)
    fit = _order(model32, name, steps, options, exact_denoised)
    if name in DRIFTING:
        slopes = [float(v) for v in fit["slopes"].split(",")]
        assert not fit["asymptotic"] and slopes[0] > slopes[-1] > order, (name, fit)
        assert abs(fit["order_fit"] - order) <= 0.3, (name, fit)
    else:
        assert fit["asymptotic"] and abs(fit["order"] - order) <= 0.25, (name, fit)


@pytest.mark.parametrize("name", ["sa_solver", "sa_solver_pece"])
def test_sa_solver_corrector_lifts_the_order(model32, exact_denoised, name):
    """Without noise SA-Solver is an Adams predictor (order 3) + corrector (order 4):
    measured 3.9-4.1 over 16-128 steps. An AB3 predictor alone, with its Euler first step,
    would tend to 2; so a working corrector shows as an order above 3.5."""
    fit = _order(model32, name, [16, 32, 64], {"eta": 0.0}, exact_denoised)
    assert fit["order_fit"] > 3.5, (name, fit)


STOCHASTIC = [n for n, s in COMFY.items() if s.stochastic]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_cell_depends_on_its_seed_only(model32, name):
    """Same seed, same image; another seed, another image; batch-mates change nothing
    (floats agree to BLAS rounding of the batched matmul)."""
    target = cell(name, 5, seed=11, topic="people", cfg=3.0)
    mates = [cell(name, 5, seed=s, topic=t, cfg=3.0) for s, t in ((1, "food"), (2, "anime"))]
    alone = sample_batch(model32, [target])
    again = sample_batch(model32, [target])
    batched = sample_batch(model32, [mates[0], target, mates[1]])
    other = sample_batch(model32, [cell(name, 5, seed=12, topic="people", cfg=3.0)])
    assert torch.equal(alone.samples, again.samples)
    assert np.array_equal(alone.images[0], batched.images[1])
    torch.testing.assert_close(alone.samples[0], batched.samples[1], rtol=0, atol=1e-7)
    assert not torch.equal(alone.samples, other.samples)


@pytest.mark.parametrize("pp,base", [("euler_cfg_pp", "euler"), ("dpmpp_2m_cfg_pp", "dpmpp_2m")])
def test_cfg_pp_equals_its_base_at_cfg_one_and_differs_with_guidance(model32, pp, base):
    same = [sample_batch(model32, [cell(n, 6)]).samples for n in (pp, base)]
    torch.testing.assert_close(same[0], same[1], rtol=0, atol=1e-9)  # float64 rounding
    guided = [sample_batch(model32, [cell(n, 6, cfg=5.0)]).samples for n in (pp, base)]
    assert rmse(guided[0].numpy(), guided[1].numpy())[0] > 1e-3


def test_res_multistep_equals_kdiffusion_2m_sde_heun_without_noise(model32):
    """Two derivations of the exact phi_2 weight: RES's Lagrange-in-lambda quadrature here
    and k-diffusion's closed form in dpmpp_2m_sde(solver_type='heun') at eta = 0."""
    res = sample_batch(model32, [cell("res_multistep", 9)]).samples
    kd = sample_batch(model32, [cell("dpmpp_2m_sde_heun", 9)], {"eta": 0.0}).samples
    torch.testing.assert_close(res, kd, rtol=0, atol=1e-10)  # measured 1.4e-15 (float64)


def test_euler_cfg_pp_step_by_hand(model32):
    """One CFG++ step: x1 = D_guided(x0) + sigma_1 / sigma_0 * (x0 - D_uncond(x0))."""
    c = cell("euler_cfg_pp", 1, cfg=4.0)
    sig = torch.tensor([10.0, 2.0, 0.0], dtype=torch.float64)
    x0 = model32.initial_noise([1], 32, 32).double() * sig[0]
    cond = model32.encode_prompts([c.prompt], [c.topic])
    got = []
    sample_euler_cfg_pp(GuidedDenoiser(model32), x0, sig, {"conditioning": cond, "cfg_scale": 4.0},
                        callback=lambda d: got.append(d["x"]))
    s0 = sig[:1]
    d_c = model32.denoise(x0, s0, cond.cond)
    d_u = model32.denoise(x0, s0, cond.uncond)
    d_g = d_u + 4.0 * (d_c - d_u)
    torch.testing.assert_close(got[1], d_g + 0.2 * (x0 - d_u), rtol=1e-12, atol=1e-12)


def test_exponential_weights_match_the_closed_forms():
    """phi = sigma (the ODE), D linear in lambda through two points: weights
    (1 - e^-h) + (h - 1 + e^-h)/h_prev and -(h - 1 + e^-h)/h_prev (RES, 2nd order)."""
    s_prev, s, t = 3.0, 2.0, 1.2
    h, hp = math.log(s / t), math.log(s_prev / s)
    b_prev = -(h - 1 + math.exp(-h)) / hp
    w = itg.NoiseScale.power(1.0).weights([s, s_prev], s, t)
    assert w == pytest.approx([1 - math.exp(-h) - b_prev, b_prev], rel=1e-13)
    # Adams-Bashforth 2 in sigma: dt (1 + dt / (2 dt_prev)) and -dt^2 / (2 dt_prev)
    assert itg.adams_sigma_weights([s, s_prev], s, t) == pytest.approx([-1.12, 0.32], rel=1e-13)
    # tau = 1 SDE: noise std sigma_t sqrt(1 - e^(-2h))
    assert itg.NoiseScale.power(2.0).noise_std(s, t) == pytest.approx(
        t * math.sqrt(1 - math.exp(-2 * h)), rel=1e-13)


@pytest.mark.parametrize("alias,name,schedule", [
    ("dpmpp_2m_k", "dpmpp_2m", "karras"), ("euler_k", "euler", "karras"),
    ("lms_k", "lms", "karras"), ("heun_k", "heun", "karras"), ("kdpm_2", "dpm_2", None),
    ("kdpm_2_a_k", "dpm_2_ancestral", "karras"), ("dpmpp_sde_k", "dpmpp_sde", "karras"),
    ("dpmpp_2m_sde_k", "dpmpp_2m_sde", "karras"), ("euler_a", "euler_ancestral", None),
    ("dpmpp_2s", "DPMSolverSinglestepScheduler", None),
    ("dpmpp_2s_k", "DPMSolverSinglestepScheduler_karras", None),
    ("dpmpp_3m", "DPMSolverMultistepScheduler_3M", None),
    ("dpmpp_3m_k", "DPMSolverMultistepScheduler_3M_karras", None),
    ("unipc_k", "UniPCMultistepScheduler_karras", None), ("pndm", "PNDMScheduler", None),
    ("tcd", "TCDScheduler", None), ("deis_k", "deis", "karras"),
    ("dpmpp_2m_sde_gpu", "dpmpp_2m_sde", None), ("dpmpp_3m_sde_gpu", "dpmpp_3m_sde", None),
    ("dpmpp_sde_gpu", "dpmpp_sde", None), ("heunpp", "heunpp2", None),
    ("DPM++ 2M SDE Heun Karras", "dpmpp_2m_sde_heun", "karras"),
    # InvokeAI 2.3
    ("k_dpmpp_2", "dpmpp_2m", None), ("k_dpmpp_2_karras", "dpmpp_2m", "karras"),
    ("euler_karras", "euler", "karras"), ("k_euler_a", "euler_ancestral", None),
    ("k_lms", "lms", None), ("k_heun", "heun", None), ("plms", "plms", None),
])
def test_invokeai_a1111_and_comfyui_names(alias, name, schedule):
    r = resolve_sampler(alias)
    assert (r.spec.name, r.schedule) == (name, schedule)
