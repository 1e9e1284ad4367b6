"""The names each app gives its samplers, and what each name runs there.

A user who types an app's sampler name expects the sampler that app runs under it.
These tables restate the apps' own sampler tables (read, not copied):

- A1111: ``samplers_k_diffusion`` in ``modules/sd_samplers_kdiffusion.py`` (commit
  01a40c62556b): label, k-diffusion function, aliases, and the options ``scheduler``
  ("karras"), ``discard_next_to_last_sigma`` (build steps + 1 sigmas, drop the
  next-to-last), ``brownian_noise`` (a Brownian-tree noise sampler) and ``second_order``
  (A1111 doubles its step count for progress and prompt scheduling; 2 NFE per step).
- InvokeAI: ``SCHEDULER_MAP`` in ``invokeai/backend/stable_diffusion/schedulers/
  schedulers.py`` (commit 66d254b7): a diffusers class and its options per name.
- ComfyUI: ``KSAMPLER_NAMES`` + ``ddim``, ``uni_pc``, ``uni_pc_bh2`` (comfy/samplers.py).

A name that means different things in two apps resolves by its exact spelling
(:func:`convergence.samplers.spec.resolve_sampler`) and each meaning is reachable under a
qualified name, ``APP:NAME`` (``invokeai:unipc``, ``a1111:DPM2``, ``comfyui:uni_pc``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

APPS = ("comfyui", "a1111", "invokeai", "k-diffusion", "diffusers")
KARRAS = "karras"


@dataclass(frozen=True)
class AppName:
    """One name of one app: the registered sampler it runs, the schedule it fixes, A1111's
    ``discard_next_to_last_sigma`` and, for InvokeAI, the diffusers scheduler class with
    the options its map passes (what ``model.sampler_backend=diffusers`` runs)."""

    app: str
    name: str
    sampler: str
    schedule: str | None = None
    discard_penultimate: bool = False
    diffusers_cls: str | None = None
    diffusers_options: dict = field(default_factory=dict)
    #: the registered diffusers sampler of the same class whose claims apply; when
    #: ``exact`` it is that configuration and runs as itself
    like: str | None = None
    exact: bool = False


def _a1111(label: str, sampler: str, aliases: tuple[str, ...], karras: bool = False,
           discard: bool = False) -> list[AppName]:
    sched = KARRAS if karras else None
    return [AppName("a1111", n, sampler, sched, discard) for n in (label, *aliases)]


#: A1111's k-diffusion table. Its "DPM++ 2M SDE" and "... Karras" share the alias
#: k_dpmpp_2m_sde_ka; A1111 finds the first, so it is kept on the unscheduled one.
A1111 = tuple(n for row in (
    _a1111("Euler a", "euler_ancestral", ("k_euler_a", "k_euler_ancestral")),
    _a1111("Euler", "euler", ("k_euler",)),
    _a1111("LMS", "lms", ("k_lms",)),
    _a1111("Heun", "heun", ("k_heun",)),
    _a1111("DPM2", "dpm_2", ("k_dpm_2",), discard=True),
    _a1111("DPM2 a", "dpm_2_ancestral", ("k_dpm_2_a",), discard=True),
    _a1111("DPM++ 2S a", "dpmpp_2s_ancestral", ("k_dpmpp_2s_a",)),
    _a1111("DPM++ 2M", "dpmpp_2m", ("k_dpmpp_2m",)),
    _a1111("DPM++ SDE", "dpmpp_sde", ("k_dpmpp_sde",)),
    _a1111("DPM++ 2M SDE", "dpmpp_2m_sde", ("k_dpmpp_2m_sde_ka",)),
    _a1111("DPM fast", "dpm_fast", ("k_dpm_fast",)),
    _a1111("DPM adaptive", "dpm_adaptive", ("k_dpm_ad",)),
    _a1111("LMS Karras", "lms", ("k_lms_ka",), karras=True),
    _a1111("DPM2 Karras", "dpm_2", ("k_dpm_2_ka",), karras=True, discard=True),
    _a1111("DPM2 a Karras", "dpm_2_ancestral", ("k_dpm_2_a_ka",), karras=True, discard=True),
    _a1111("DPM++ 2S a Karras", "dpmpp_2s_ancestral", ("k_dpmpp_2s_a_ka",), karras=True),
    _a1111("DPM++ 2M Karras", "dpmpp_2m", ("k_dpmpp_2m_ka",), karras=True),
    _a1111("DPM++ SDE Karras", "dpmpp_sde", ("k_dpmpp_sde_ka",), karras=True),
    _a1111("DPM++ 2M SDE Karras", "dpmpp_2m_sde", (), karras=True),
) for n in row)

#: A1111's labels whose sampler options set brownian_noise / second_order
A1111_BROWNIAN = ("DPM++ SDE", "DPM++ 2M SDE", "DPM++ SDE Karras", "DPM++ 2M SDE Karras")
A1111_SECOND_ORDER = ("Heun", "DPM++ 2S a", "DPM++ SDE", "DPM2 Karras", "DPM2 a Karras",
                      "DPM++ 2S a Karras", "DPM++ SDE Karras")


def _invoke(name: str, sampler: str | None, cls: str, schedule: str | None = None,
            registered: str | None = None, like: str | None = None, **options) -> AppName:
    """``sampler`` None: no k-diffusion form, both backends run the diffusers class."""
    return AppName("invokeai", name, sampler or registered or f"invokeai:{name}", schedule,
                   False, cls, options, registered or like, registered is not None)


_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}
#: InvokeAI's SCHEDULER_MAP: with the k-diffusion backend each name runs ``sampler`` (and
#: ``schedule``), the method's k-diffusion form where one exists; with the diffusers backend
#: the class with its options (``registered`` when a registered sampler is exactly that,
#: else ``like``: the registered one of the same class whose claims apply)
INVOKEAI = (
    _invoke("ddim", "ddim", "DDIMScheduler", registered="DDIMScheduler"),
    _invoke("ddpm", None, "DDPMScheduler", registered="DDPMScheduler"),
    _invoke("deis", None, "DEISMultistepScheduler", registered="DEISMultistepScheduler"),
    # InvokeAI 5 adds deis_k (read from no stored source: its Karras flag as its other _k)
    _invoke("deis_k", None, "DEISMultistepScheduler", like="DEISMultistepScheduler",
            use_karras_sigmas=True),
    _invoke("lms", "lms", "LMSDiscreteScheduler", registered="LMSDiscreteScheduler",
            use_karras_sigmas=False),
    _invoke("lms_k", "lms", "LMSDiscreteScheduler", KARRAS, like="LMSDiscreteScheduler",
            use_karras_sigmas=True),
    _invoke("pndm", None, "PNDMScheduler", registered="PNDMScheduler"),
    _invoke("heun", "heun", "HeunDiscreteScheduler", registered="HeunDiscreteScheduler",
            use_karras_sigmas=False),
    _invoke("heun_k", "heun", "HeunDiscreteScheduler", KARRAS, like="HeunDiscreteScheduler",
            use_karras_sigmas=True),
    _invoke("euler", "euler", "EulerDiscreteScheduler", registered="EulerDiscreteScheduler",
            use_karras_sigmas=False),
    _invoke("euler_k", "euler", "EulerDiscreteScheduler", KARRAS, like="EulerDiscreteScheduler",
            use_karras_sigmas=True),
    _invoke("euler_a", "euler_ancestral", "EulerAncestralDiscreteScheduler",
            registered="EulerAncestralDiscreteScheduler"),
    _invoke("kdpm_2", "dpm_2", "KDPM2DiscreteScheduler", registered="KDPM2DiscreteScheduler"),
    _invoke("kdpm_2_a", "dpm_2_ancestral", "KDPM2AncestralDiscreteScheduler",
            registered="KDPM2AncestralDiscreteScheduler"),
    _invoke("dpmpp_2s", None, "DPMSolverSinglestepScheduler",
            registered="DPMSolverSinglestepScheduler", use_karras_sigmas=False),
    _invoke("dpmpp_2s_k", None, "DPMSolverSinglestepScheduler",
            registered="DPMSolverSinglestepScheduler_karras", use_karras_sigmas=True),
    _invoke("dpmpp_2m", "dpmpp_2m", "DPMSolverMultistepScheduler",
            like="DPMSolverMultistepScheduler", use_karras_sigmas=False,
            euler_at_final=True, **_DPMPP),
    _invoke("dpmpp_2m_k", "dpmpp_2m", "DPMSolverMultistepScheduler", KARRAS,
            like="DPMSolverMultistepScheduler", use_karras_sigmas=True, **_DPMPP),
    _invoke("dpmpp_2m_sde", "dpmpp_2m_sde", "DPMSolverMultistepScheduler",
            registered="DPMSolverMultistepScheduler_SDE", use_karras_sigmas=False,
            algorithm_type="sde-dpmsolver++", solver_order=2),
    _invoke("dpmpp_2m_sde_k", "dpmpp_2m_sde", "DPMSolverMultistepScheduler", KARRAS,
            like="DPMSolverMultistepScheduler_SDE", use_karras_sigmas=True, algorithm_type="sde-dpmsolver++", solver_order=2),
    # DPMSolverSDEScheduler: two model calls per step but the last, stochastic (its own
    # Brownian tree, seeded 0 by InvokeAI): the claims of KDPM2 ancestral
    _invoke("dpmpp_sde", "dpmpp_sde", "DPMSolverSDEScheduler",
            like="KDPM2AncestralDiscreteScheduler", use_karras_sigmas=False,
            noise_sampler_seed=0),
    _invoke("dpmpp_sde_k", "dpmpp_sde", "DPMSolverSDEScheduler", KARRAS,
            like="KDPM2AncestralDiscreteScheduler", use_karras_sigmas=True, noise_sampler_seed=0),
    _invoke("unipc", None, "UniPCMultistepScheduler",
            registered="UniPCMultistepScheduler"),
    _invoke("lcm", None, "LCMScheduler", registered="LCMScheduler"),
)

#: ComfyUI's sampler names (KSAMPLER_NAMES + SAMPLER_NAMES' extras) that this project
#: registers; ``ddim``, ``ddpm`` and ``lcm`` are left out: under those names ComfyUI runs
#: its own functions (``ddim`` is its Euler, see COMFYUI_RUNS; its ddpm and lcm steps),
#: which the registry's ``ddim`` (CompVis), ``ddpm`` and ``lcm`` (diffusers) are not
COMFYUI = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3",
    "sa_solver", "sa_solver_pece", "uni_pc", "uni_pc_bh2",
)


#: ComfyUI names that run another registered sampler there: ``sampler_object("ddim")`` is
#: ``ksampler("euler", ...)`` (comfy/samplers.py). Reached as ``comfyui:ddim``; the plain
#: ``ddim`` stays DDIM itself, as A1111 and InvokeAI mean it.
COMFYUI_RUNS = {"ddim": "euler"}


def app_names(app: str) -> tuple[AppName, ...]:
    """The table of one app that has its own (A1111, InvokeAI); empty for the others,
    whose names are the registry's own."""
    return {"a1111": A1111, "invokeai": INVOKEAI}.get(app, ())


def qualified(text: str) -> tuple[str, str] | None:
    """``"invokeai:unipc"`` -> ("invokeai", "unipc"); None for a name without an app."""
    app, sep, rest = str(text).partition(":")
    return (app.strip().lower(), rest.strip()) if sep and app.strip().lower() in APPS else None
