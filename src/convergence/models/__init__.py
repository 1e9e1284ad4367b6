"""Models: ``model.name`` in the config -> a :class:`~convergence.models.base.Model`.

The built-in factories register here (the analytic model, diffusers pipelines); third
parties add theirs through the ``convergence.models`` entry-point group, plugins or a
``model._target_`` (docs/plugins.md): a factory ``fn(model_cfg, width, height) -> Model``, or
a k-diffusion-style denoiser ``D(x, sigma, **cond)`` or a factory of one called with
``model.params`` (:mod:`convergence.models.denoiser`)."""

from __future__ import annotations

import inspect

import torch

from convergence.core.errors import ConvergenceError
from convergence.core.registries import MODELS, register_model
from convergence.models.base import Model
from convergence.models.denoiser import denoiser_model
from convergence.models.device import require_cpu, select_device, select_dtype
from convergence.models.diffusers_backend import (
    DiffusersModel,
    LatentPipelineModel,
    load_pipeline,
    quiet_library,
)
from convergence.models.flow_matching import FlowMatchModel


@register_model("analytic")
def analytic_model(model_cfg, width: int, height: int) -> Model:
    """The embedded analytic model (CPU, float64)."""
    # imported when built: scikit-image's pictures and numba's kernels cost about a second
    # that commands on other models need not pay
    from convergence.models.analytic import AnalyticModel
    require_cpu(model_cfg.device, "the analytic model")
    return AnalyticModel(width, height)


#: what a diffusers pipeline's model has that claims need (claims.ClaimInputs.capabilities):
#: a text-to-image model trained on photographs draws faces and bodies; the analytic model
#: declares none (its "people" topic is a group of pictures)
@register_model("diffusers", capabilities=("faces", "bodies"))
def diffusers_model(model_cfg, width: int, height: int) -> LatentPipelineModel:
    """A diffusers pipeline: a flow-matching scheduler makes it a :class:`FlowMatchModel`,
    anything else a VP :class:`DiffusersModel`. The libraries' own log lines are silenced
    while it loads: a failure becomes one line."""
    with quiet_library():
        return _diffusers(model_cfg, width, height)


def _diffusers(model_cfg, width: int, height: int) -> LatentPipelineModel:
    device = select_device(model_cfg.device)
    dtype = select_dtype(device, model_cfg.dtype)
    if dtype == torch.float64:
        raise ConvergenceError("model.dtype=float64 is not supported for diffusers models; "
                               "use float32")
    pipe = load_pipeline(model_cfg, device, dtype)
    if type(pipe.scheduler).__name__.startswith("FlowMatch"):
        return FlowMatchModel(pipe, model_cfg, width, height, device, dtype)
    if getattr(pipe, "unet", None) is None or not hasattr(pipe.scheduler, "alphas_cumprod"):
        raise ConvergenceError(f"pipeline {type(pipe).__name__} at {model_cfg.path!r}: neither a "
                               "UNet on a DDPM schedule nor a flow-matching model")
    return DiffusersModel(pipe, model_cfg, width, height, device, dtype)


def is_model_factory(obj) -> bool:
    """Whether ``obj`` is a registry factory ``fn(model_cfg, width, height) -> Model`` (its
    parameters named so), rather than a denoiser or a factory of one."""
    if inspect.isclass(obj) or not callable(obj):
        return False
    try:
        names = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return False
    return names[:1] == ["model_cfg"] or names[1:3] == ["width", "height"]


def _where(obj) -> str:
    """``module.name`` of a function or class (of an instance: its class), for messages."""
    named = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{named.__module__}.{named.__qualname__}"


def build_model(model_cfg, width: int, height: int) -> Model:
    """Build the configured model and check it can make images of this size. A model that
    is not built in is named by the config (``model.name``), whatever its object says."""
    entry = MODELS.entry(model_cfg.name)
    target = entry.load()
    if is_model_factory(target):
        model = target(model_cfg, width, height)   # reads model_cfg.params itself
    else:
        where = getattr(model_cfg, "_target_", None) or _where(target)
        model = denoiser_model(target, str(where), model_cfg, width, height)
    if entry.source != "builtin":
        model.name = str(model_cfg.name)
    model.validate_size(width, height)
    return model
