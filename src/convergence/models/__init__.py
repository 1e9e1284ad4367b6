"""Model registry: ``model.name`` in the config -> a :class:`Model`."""

from __future__ import annotations

from collections.abc import Callable

from convergence.errors import ConvergenceError
from convergence.models.base import Model

ModelFactory = Callable[..., Model]
_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str):
    def deco(factory: ModelFactory) -> ModelFactory:
        _MODELS[name] = factory
        return factory
    return deco


@register_model("analytic")
def _analytic(model_cfg, width: int, height: int) -> Model:
    from convergence.models.analytic import AnalyticModel
    return AnalyticModel(width, height)


@register_model("diffusers")
def _diffusers(model_cfg, width: int, height: int) -> Model:
    from convergence.models.diffusers_backend import load_diffusers_model
    return load_diffusers_model(model_cfg, width, height)


def build_model(model_cfg, width: int, height: int) -> Model:
    """Build the configured model and check it can make images of this size."""
    factory = _MODELS.get(model_cfg.name)
    if factory is None:
        raise ConvergenceError(f"unknown model {model_cfg.name!r}; known: {', '.join(_MODELS)}")
    model = factory(model_cfg, width, height)
    model.check_size(width, height)
    return model
