"""A1111 and InvokeAI names run what those apps run; authors' own code runs as it is.

References, read in the apps' sources (restated here, not imported from the project):
A1111 ``modules/sd_samplers_kdiffusion.py`` (01a40c62556b): "DPM2", "DPM2 a" and their
Karras forms set ``discard_next_to_last_sigma`` (sigmas for steps + 1, the next-to-last
dropped); "DPM++ SDE" and "DPM++ 2M SDE" (and Karras) set ``brownian_noise``; "Heun",
"DPM++ 2S a", "DPM++ SDE", "DPM2 Karras", ... set ``second_order``. InvokeAI
``schedulers.py`` (66d254b7): ``unipc`` is UniPCMultistepScheduler with its defaults
(solver_type bh2), ``euler_k`` EulerDiscreteScheduler(use_karras_sigmas=True),
``dpmpp_2m`` DPMSolverMultistepScheduler(euler_at_final=True), ``deis``
DEISMultistepScheduler.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convergence.core.errors import ConvergenceError
from convergence.models.comfy_facade import EPS
from convergence.run.plan import Cell
from convergence.run.runner import sample_batch
from convergence.samplers import k_sampling
from convergence.samplers.noise import CellNoise
from convergence.samplers.schedules import get_sigmas
from convergence.samplers.spec import SamplingContext, make_spec, resolve_sampler
from convergence.tools.check import resolve_for_check


def cell(sampler, steps=6, schedule="karras", cfg=3.0):
    return Cell("analytic", "h", "food", "p", 1, sampler, schedule, steps, cfg, 32, 32)


@pytest.mark.parametrize("name,sampler,schedule", [
    ("DPM2", "dpm_2", None), ("DPM2 a", "dpm_2_ancestral", None),
    ("DPM2 Karras", "dpm_2", "karras"), ("DPM2 a Karras", "dpm_2_ancestral", "karras"),
])
def test_a1111_dpm2_pair_discards_the_next_to_last_sigma(model32, name, sampler, schedule):
    r = resolve_sampler(name)
    assert r.spec.discard_penultimate and r.schedule == schedule
    assert r.spec.function() is resolve_sampler(sampler).spec.function()
    # A1111: sigmas for steps + 1, then [all but the last two] + [the last]
    full = get_sigmas(model32, "karras", 7)
    expected = torch.cat([full[:-2], full[-1:]])
    assert torch.equal(r.spec.sigmas(model32, "karras", 6), expected) and len(expected) == 7
    # ComfyUI's dpm_2 and the lowercase spelling keep the full schedule
    for plain in ("dpm_2", "dpm2", "comfyui:dpm_2"):
        assert not resolve_sampler(plain).spec.discard_penultimate


def test_a1111_dpm2_image_is_k_diffusions_dpm2_on_a1111s_sigmas(model32):
    """The cell the harness runs for "DPM2 Karras" equals k-diffusion's sample_dpm_2
    called directly on the discarded sigmas, to the bit (the same operations)."""
    name = resolve_sampler("DPM2 Karras").spec.name
    out = sample_batch(model32, [cell(name)])
    full = get_sigmas(model32, "karras", 7)
    sigmas = torch.cat([full[:-2], full[-1:]]).to(model32.sample_dtype)
    from convergence.models.base import GuidedDenoiser
    x = model32.initial_noise([1], 32, 32) * sigmas[0]
    cond = model32.encode_prompts(["p"], ["food"])
    ref = k_sampling().sample_dpm_2(GuidedDenoiser(model32), x, sigmas, disable=True,
                                    extra_args={"conditioning": cond, "cfg_scale": 3.0})
    assert torch.equal(out.samples, ref)
    assert out.nfe == 2 * 6 - 1


def test_a1111_karras_spans_the_models_training_sigmas(model32):
    """A1111's Karras schedule runs from the largest to the smallest training sigma of the
    model (``model_wrap.sigmas[-1]``, ``[0]``), rho 7: so does the harness's ``karras``."""
    ac = model32.alphas_cumprod.double()
    train = ((1 - ac) / ac) ** 0.5
    s = get_sigmas(model32, resolve_sampler("DPM++ 2M Karras").schedule, 10)
    ref = k_sampling().get_sigmas_karras(10, float(train[0]), float(train[-1]), rho=7.0).double()
    assert torch.equal(s, ref)  # measured: identical (the same range, the same function)


def test_a1111_noise_and_second_order_flags():
    for label in ("DPM++ SDE", "DPM++ 2M SDE", "DPM++ SDE Karras", "DPM++ 2M SDE Karras"):
        assert resolve_sampler(label).spec.noise == "brownian", label
    for label in ("Heun", "DPM++ 2S a", "DPM++ SDE", "DPM2 Karras", "DPM2 a Karras",
                  "DPM++ 2S a Karras", "DPM++ SDE Karras"):
        assert resolve_sampler(label).spec.nfe_per_step == 2, label
    assert resolve_sampler("DPM++ 2M Karras").schedule == "karras"


def _scheduler(name, backend="k-diffusion"):
    from convergence.samplers.diffusers_adapter import build_scheduler
    ctx = SamplingContext(noise=CellNoise([1]), steps=4,
                          alphas_cumprod=_ac(), scheduler_config=None)
    return build_scheduler(resolve_sampler(name, backend).spec.function().variant, ctx)


def _ac():
    from convergence.models.analytic import AnalyticModel
    return AnalyticModel(32, 32).alphas_cumprod


@pytest.mark.parametrize("name,backend,cls,options", [
    ("unipc", "k-diffusion", "UniPCMultistepScheduler", {"solver_type": "bh2"}),
    ("invokeai:unipc", "k-diffusion", "UniPCMultistepScheduler", {"solver_type": "bh2"}),
    ("uni_pc", "k-diffusion", "UniPCMultistepScheduler", {"solver_type": "bh1"}),
    ("euler_k", "diffusers", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("invokeai:dpmpp_2m", "k-diffusion", "DPMSolverMultistepScheduler",
     {"euler_at_final": True, "use_karras_sigmas": False, "algorithm_type": "dpmsolver++"}),
    ("invokeai:deis", "k-diffusion", "DEISMultistepScheduler", {"use_karras_sigmas": False}),
    ("invokeai:deis_k", "k-diffusion", "DEISMultistepScheduler", {"use_karras_sigmas": True}),
    ("dpmpp_sde_k", "diffusers", "DPMSolverSDEScheduler",
     {"use_karras_sigmas": True, "noise_sampler_seed": 0}),
])
def test_invokeai_names_build_its_maps_class_and_options(name, backend, cls, options):
    s = _scheduler(name, backend)
    assert type(s).__name__ == cls
    for k, v in options.items():
        assert s.config[k] == v, (name, k)


def test_unipc_and_uni_pc_are_not_merged_and_k_backend_equivalents():
    assert resolve_sampler("unipc").spec.name != resolve_sampler("uni_pc").spec.name
    assert resolve_sampler("deis").spec.family == "comfyui"      # ComfyUI's, plainly
    r = resolve_sampler("euler_k")                                 # k-diffusion backend
    assert (r.spec.name, r.schedule) == ("euler", "karras")
    with pytest.raises(ConvergenceError, match="unknown invokeai sampler 'nope'"):
        resolve_sampler("invokeai:nope")


def test_comfyuis_ddim_is_its_euler_and_plain_ddim_stays_ddim():
    """ComfyUI's sampler_object("ddim") is ksampler("euler"): comfyui:ddim runs k-diffusion's
    Euler; the plain name stays DDIM (CompVis), as A1111 and InvokeAI mean it."""
    comfy, plain = resolve_sampler("comfyui:ddim"), resolve_sampler("ddim")
    assert comfy.spec.function() is resolve_sampler("euler").spec.function()
    assert plain.spec.family == "compvis" and comfy.spec.name != plain.spec.name
    with pytest.raises(ConvergenceError, match="ComfyUI's names here: .*ddim"):
        resolve_sampler("comfyui:nope")


def test_invokeai_cell_runs_under_its_qualified_name(model32):
    name = resolve_sampler("euler_k", backend="diffusers").spec.name
    assert name == "invokeai:euler_k"
    out = sample_batch(model32, [cell(name, steps=4, schedule="discrete", cfg=1.0)])
    assert out.nfe == 4 and torch.isfinite(out.samples).all()


def test_samplers_command_lists_every_typed_name_with_its_app(capsys):
    from convergence.cli import main
    with pytest.raises(SystemExit) as e:
        main(["samplers"])
    assert e.value.code == 0
    names = capsys.readouterr().out.split("\n\n")[0]  # the names, before the claims
    lines = {line.split("  ")[0]: line for line in names.splitlines()}
    for name, app in (("dpmpp_2m_k", "invokeai"), ("DPM++ 2M Karras", "a1111"),
                      ("unipc", "invokeai"), ("uni_pc", "comfyui"), ("DPM2", "a1111"),
                      ("invokeai:deis", "invokeai"), ("euler", "comfyui"),
                      ("comfyui:ddim", "comfyui")):
        assert name in lines and app in lines[name], name
    assert "karras" in lines["dpmpp_2m_k"] and "karras" in lines["DPM++ 2M Karras"]
    with pytest.raises(SystemExit) as e:
        main(["samplers", "--app", "a1111"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "DPM2 Karras" in out and "uni_pc " not in out and "res_multistep" not in out
    for app, present, absent in (("k-diffusion", "dpmpp_3m_sde", "EulerDiscreteScheduler"),
                                 ("diffusers", "UniPCMultistepScheduler", "dpmpp_3m_sde"),
                                 ("invokeai", "invokeai:dpmpp_2m", "res_multistep"),
                                 ("comfyui", "res_multistep", "DPM2 Karras")):
        with pytest.raises(SystemExit):
            main(["samplers", "--app", app])
        listed = {line.split("  ")[0] for line in capsys.readouterr().out.splitlines()}
        assert present in listed and absent not in listed, app


def test_a_diffusers_scheduler_class_runs_like_the_builtins(model32):
    """diffusers' EDMEulerScheduler by module:Class: on the analytic model it is Euler in
    sigma on the scheduler's own sigmas from sqrt(sigma_max^2 + 1) * noise (diffusers'
    init_noise_sigma), each step x + (s' - s)(x - D)/s, D the harness's denoiser."""
    spec = resolve_for_check("diffusers:EDMEulerScheduler", order=1)
    assert spec.family == "diffusers" and spec.order == 1
    out = sample_batch(model32, [cell(spec.name, steps=5, schedule="discrete", cfg=1.0)])
    from diffusers import EDMEulerScheduler

    from convergence.models.base import GuidedDenoiser
    sched = EDMEulerScheduler()
    sched.set_timesteps(5)
    s = sched.sigmas.to(torch.float64)
    x = model32.initial_noise([1], 32, 32).double() * (80.0 ** 2 + 1) ** 0.5
    den = GuidedDenoiser(model32)
    cond = model32.encode_prompts(["p"], ["food"])
    for i in range(5):
        d = den(x.float(), s[i].float().expand(1), conditioning=cond).double()
        x = x + (s[i + 1] - s[i]) * (x - d) / s[i]
    assert out.nfe == 5
    # diffusers' step upcasts to float32 and the analytic model runs in float32: measured
    # 3.1e-7 of max |x|; 1e-5 leaves room for float32 rounding on other CPUs
    err = float((out.samples.double() - x).abs().max() / x.abs().max())
    assert err < 1e-5, err


def comfy_style_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler written as ComfyUI custom nodes write samplers."""
    extra_args = {} if extra_args is None else extra_args
    ms = model.inner_model.inner_model.model_sampling
    assert isinstance(ms, EPS) and ms.sigma_min < ms.sigma_max
    assert ms.percent_to_sigma(0.0) > ms.sigma_max and ms.percent_to_sigma(1.0) == 0.0
    assert float(ms.sigma(ms.timestep(torch.tensor(ms.sigma_max)))) == pytest.approx(ms.sigma_max)
    assert isinstance(extra_args["seed"], int) and isinstance(extra_args["model_options"], dict)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def test_a_comfyui_style_function_runs_unchanged(model32):
    spec = make_spec("comfy_style_euler", comfy_style_euler, {"order": 1})
    from convergence.core.registries import SAMPLERS
    SAMPLERS.add("comfy_style_euler", spec, replace=True)
    try:
        out = sample_batch(model32, [cell("comfy_style_euler", steps=5)])
        ref = sample_batch(model32, [cell("euler", steps=5)])
    finally:
        SAMPLERS.unregister("comfy_style_euler")
    assert torch.equal(out.samples, ref.samples)


def test_comfy_model_sampling_follows_comfyui(model32):
    ms = model32.model_sampling
    ac = model32.alphas_cumprod.double()
    sig = ((1 - ac) / ac) ** 0.5
    assert ms.sigma_min == pytest.approx(float(sig[0])) and ms.sigma_max == pytest.approx(float(sig[-1]))
    # ComfyUI: percent p -> sigma(999 (1 - p)), log-sigma interpolation between timesteps
    want = float(((sig[199].log() + sig[200].log()) / 2).exp())
    # 999 (1 - p) is 199.5 up to float64 rounding (~1e-13), so sigma to ~1e-15 relative
    assert ms.percent_to_sigma(1 - 199.5 / 999) == pytest.approx(want, rel=1e-12)
    assert int(ms.timestep(sig[321])) == 321


@pytest.mark.parametrize("target,expected", [
    ("json:dumps", "takes (obj"), ("json:JSONDecoder", "is a type"),
    ("math:pi", "is a float"),
])
def test_anything_else_is_one_line_exit_2(target, expected):
    res = subprocess.run([str(Path(sys.executable).parent / "convergence"), "check", target, "--no-baseline"],
                         capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr and "expected a sampler function" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_check_takes_app_names_and_scheduler_nodes_with_options():
    assert resolve_for_check("a1111:DPM2").discard_penultimate
    assert resolve_for_check("DPM2 a Karras").name == "a1111:DPM2 a"
    # a _target_ node's other keys become the scheduler's config options
    spec = resolve_for_check({"_target_": "diffusers.EulerDiscreteScheduler",
                              "name": "my_euler_karras", "use_karras_sigmas": True})
    assert spec.family == "diffusers"
    assert spec.function().variant.overrides == {"use_karras_sigmas": True}
