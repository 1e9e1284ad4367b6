"""A k-diffusion-style denoiser as a model (models/denoiser.py): how a ``_target_`` is read,
its params, unconditional models, display of 1- and N-channel samples, the config's name."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from convergence.config.schema import ModelConfig
from convergence.core.errors import ConvergenceError
from convergence.core.registries import MODELS
from convergence.models import build_model, is_model_factory
from convergence.models.base import (
    Conditioning,
    GuidedDenoiser,
    cat_rows,
    require_guidance,
    take_rows,
)
from convergence.models.denoiser import DenoiserModel, is_denoiser, to_rgb8


def shrink(x, sigma):
    """D of N(0.3, 0.25 I) data: 0.3 + 0.25 / (0.25 + sigma^2) (x - 0.3)."""
    s2 = sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2
    return 0.3 + 0.25 / (0.25 + s2) * (x - 0.3)


class Net(torch.nn.Module):
    sigma_min, sigma_max, channels = 0.01, 20.0, 4

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(gain))

    def forward(self, input, sigma, **cond):
        return self.gain * shrink(input, sigma)


def make_net(gain: float = 1.0) -> Net:
    return Net(gain)


def legacy(model_cfg, width, height):
    return DenoiserModel(shrink, "legacy-object-name", "legacy", {"channels": 1,
                         "display_range": [-1, 1]}, torch.device("cpu"), torch.float32)


@pytest.fixture
def user_pkg(monkeypatch):
    mod = types.ModuleType("user_models_for_test")
    mod.shrink, mod.make_net, mod.legacy, mod.Net = shrink, make_net, legacy, Net
    monkeypatch.setitem(sys.modules, "user_models_for_test", mod)
    registered = []

    def build(target: str, name: str | None = None, **params):
        cfg = ModelConfig(name=name or target, _target_=target, params=params, device="cpu")
        registered.append(MODELS.from_target({"_target_": target, "name": cfg.name}))
        return build_model(cfg, 16, 8)
    yield build
    for n in set(registered):
        MODELS.unregister(n)


def test_what_a_target_is():
    assert is_denoiser(shrink) and is_denoiser(Net()) and not is_denoiser(make_net)
    assert not is_denoiser(Net)   # a class is a factory of one
    assert is_model_factory(legacy) and not is_model_factory(shrink)
    assert not is_model_factory(make_net)


def test_a_plain_function_is_a_model_named_by_the_config(user_pkg):
    m = user_pkg("user_models_for_test.shrink", name="mine", channels=1, display_range=[-1, 1])
    assert isinstance(m, DenoiserModel) and m.name == "mine"
    assert m.latent_shape(16, 8) == (1, 8, 16) and not m.conditional
    assert (m.sigma_min, m.sigma_max) == (0.002, 80.0)   # EDM's range: stated nowhere
    x = torch.randn(2, 1, 8, 16)
    cond = m.encode_prompts(["a", "b"], ["t", "t"])
    # unconditional: no dummy tensor, D gets x and sigma only, through CFG's call at cfg 1
    out = GuidedDenoiser(m)(x, torch.tensor([1.0, 2.0]), conditioning=cond)
    assert torch.equal(out, shrink(x, torch.tensor([1.0, 2.0])))


def test_a_factory_gets_the_params_and_the_attributes_are_read(user_pkg):
    m = user_pkg("user_models_for_test.make_net", gain=2.0, display_range=[0, 1])
    assert m.name == "user_models_for_test.make_net"   # no model.name: the target's path
    assert (m.sigma_min, m.sigma_max, m.channels) == (0.01, 20.0, 4)
    assert float(m.denoiser.gain.detach()) == 2.0 and m.fingerprint()["params"]["gain"] == 2.0
    other = user_pkg("user_models_for_test.make_net", gain=3.0, display_range=[0, 1])
    assert other.fingerprint()["weights"] != m.fingerprint()["weights"]
    # params override the denoiser's attributes
    assert user_pkg("user_models_for_test.Net", sigma_max=5.0, display_range=[0, 1]).sigma_max == 5.0


def test_a_bad_param_is_one_line_naming_it_and_the_accepted_ones(user_pkg):
    with pytest.raises(ConvergenceError, match=r"model.params.gian is not accepted by "
                       r"user_models_for_test.make_net \(it takes: gain;"):
        user_pkg("user_models_for_test.make_net", gian=2.0)
    with pytest.raises(ConvergenceError, match=r"model.params.gain: user_models_for_test.shrink "
                       "is a denoiser, not a factory"):
        user_pkg("user_models_for_test.shrink", gain=2.0)
    with pytest.raises(ConvergenceError, match="sigma_min < sigma_max"):
        user_pkg("user_models_for_test.shrink", sigma_min=3.0, sigma_max=2.0)
    with pytest.raises(ConvergenceError, match="display_range must be"):
        user_pkg("user_models_for_test.shrink", display_range=[1, 0])


def test_a_legacy_factory_keeps_its_model_and_takes_the_config_name(user_pkg):
    m = user_pkg("user_models_for_test.legacy", name="galaxy")
    assert m.name == "galaxy"   # not its own "legacy-object-name", never "model"


def test_display_range_derived_once_from_the_models_samples_and_recorded(user_pkg):
    m = user_pkg("user_models_for_test.shrink", channels=1)
    lo, hi = m.display_range
    # samples of N(0.3, 0.5^2): 8 seeds x 128 pixels reach about 0.3 +- 3.3 std
    assert -2.0 < lo < -0.5 and 1.0 < hi < 2.5
    fp = m.fingerprint()
    assert fp["display_range"] == [lo, hi] and fp["display_derived"] is True
    again = user_pkg("user_models_for_test.shrink", channels=1)
    assert again.display_range == (lo, hi)   # the same seeds: the same range, the same cells


def test_one_channel_grey_and_n_channels_the_first_three():
    x = torch.linspace(-1, 1, 4).reshape(1, 1, 2, 2)
    grey = to_rgb8(x, (-1.0, 1.0))
    assert grey.shape == (1, 2, 2, 3) and (grey[..., 0] == grey[..., 2]).all()
    assert grey[0, 0, 0, 0] == 0 and grey[0, 1, 1, 0] == 255
    four = torch.stack([torch.full((2, 2), v) for v in (0.0, 0.5, 1.0, -7.0)])[None]
    rgb = to_rgb8(four, (0.0, 1.0))
    assert rgb[0, 0, 0].tolist() == [0, 128, 255]   # the fourth channel is not shown


def test_unconditional_models_refuse_guidance_in_one_line(user_pkg):
    m = user_pkg("user_models_for_test.shrink", name="u", display_range=[-1, 1])
    require_guidance(m, [1.0])
    with pytest.raises(ConvergenceError, match=r"model 'u' is unconditional: .*cfg must be "
                       r"\[1.0\], got cfg=\[1.0, 7.5\]"):
        require_guidance(m, [1.0, 7.5])


def test_none_conditioning_passes_through_batching():
    """An unconditional Model subclass may return cond=None: batching keeps it None."""
    assert cat_rows([None, None]) is None and take_rows(None, 0, 1) is None
    assert cat_rows([{}, {}]) == {} and take_rows({}, 0, 1) == {}


def test_a_conditional_denoiser_gets_its_keywords(user_pkg, monkeypatch):
    seen = {}

    def cond_d(x, sigma, *, shift):
        seen["shift"] = shift
        return shrink(x, sigma) + shift.reshape(-1, 1, 1, 1)

    def encode(prompts, topics):
        return ({"shift": torch.ones(len(prompts))}, {"shift": torch.zeros(len(prompts))})
    mod = sys.modules["user_models_for_test"]
    monkeypatch.setattr(mod, "cond_d", cond_d, raising=False)
    monkeypatch.setattr(mod, "encode", encode, raising=False)
    m = user_pkg("user_models_for_test.cond_d", conditioning="user_models_for_test:encode",
                 display_range=[-1, 1])
    assert m.conditional
    c = m.encode_prompts(["a"], ["t"])
    x, s = torch.zeros(1, 3, 8, 16), torch.tensor([1.0])
    out = GuidedDenoiser(m)(x, s, conditioning=c, cfg_scale=2.0)
    # uncond + 2 (cond - uncond): the shift counts twice
    assert torch.allclose(out, shrink(x, s) + 2.0)
    assert isinstance(c, Conditioning) and seen["shift"].shape == (2,)


def test_model_params_compose_from_the_command_line():
    from convergence.config.compose import compose_config
    cfg = compose_config(["study=smoke", "model._target_=convergence.models.analytic_model",
                          "model.name=wrapped", "model.params.sigma_min=0.01"])
    try:
        assert cfg.model.params == {"sigma_min": 0.01} and cfg.model.name == "wrapped"
    finally:
        MODELS.unregister("wrapped")


def test_rgb_rounding_matches_the_range():
    x = torch.tensor([[[[0.25]]]], dtype=torch.float64)
    assert to_rgb8(x, (0.0, 1.0))[0, 0, 0, 0] == round(0.25 * 255)


def test_an_unconditional_model_refuses_cfg_before_running(tmp_path, user_pkg):
    """The runner's first step: one line, nothing stored."""
    from conftest import make_config

    from convergence.run.runner import run_study
    model = user_pkg("user_models_for_test.shrink", name="u", display_range=[-1, 1])
    cfg = make_config(tmp_path, cfg=[7.5])
    with pytest.raises(ConvergenceError, match="model 'u' is unconditional"):
        run_study(cfg, model)
    assert not (tmp_path / "results" / "t" / "cells.parquet").exists()


def test_check_model_option_becomes_overrides():
    from convergence.tools.check import model_overrides
    assert model_overrides(None) == []
    assert model_overrides("my_pkg:make") == ["model._target_=my_pkg.make"]
    assert model_overrides("analytic") == ["model=analytic"]   # conf/model/analytic.yaml
    with pytest.raises(ConvergenceError, match=r"unknown --model 'galaxy': give a registered model \(analytic, diffusers"):
        model_overrides("galaxy")
    MODELS.register("galaxy_test_model", legacy)
    try:
        assert model_overrides("galaxy_test_model") == ["model.name=galaxy_test_model"]
    finally:
        MODELS.unregister("galaxy_test_model")


def test_params_of_a_built_in_model_are_one_line(tmp_path):
    from conftest import make_config
    with pytest.raises(ConvergenceError, match=r"model.params.sigma_min: the built-in model "
                       "'analytic' takes no params"):
        make_config(tmp_path, model={"name": "analytic", "params": {"sigma_min": 0.1}})
