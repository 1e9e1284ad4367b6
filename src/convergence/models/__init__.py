"""Model registry: ``model.name`` in the config -> a :class:`Model`."""

from __future__ import annotations

from collections.abc import Callable

from convergence.models.base import Model
from convergence.registry import Registry

ModelFactory = Callable[..., Model]
#: ``factory(model_cfg, width, height) -> Model``; third parties add to it through the
#: ``convergence.models`` entry-point group or plugins (docs/plugins.md)
MODELS: Registry[ModelFactory] = Registry("model", group="convergence.models")
register_model = MODELS.register


@register_model("analytic")
def _analytic(model_cfg, width: int, height: int) -> Model:
    from convergence.models.analytic import AnalyticModel
    from convergence.models.device import check_cpu_only
    check_cpu_only(model_cfg.device, "the analytic model")
    return AnalyticModel(width, height)


@register_model("diffusers")
def _diffusers(model_cfg, width: int, height: int) -> Model:
    from convergence.failures import quiet_library
    from convergence.models.diffusers_backend import load_diffusers_model
    with quiet_library():
        return load_diffusers_model(model_cfg, width, height)


def build_model(model_cfg, width: int, height: int) -> Model:
    """Build the configured model and check it can make images of this size."""
    model = MODELS.get(model_cfg.name)(model_cfg, width, height)
    model.check_size(width, height)
    return model
