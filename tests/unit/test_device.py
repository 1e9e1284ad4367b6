"""Device and dtype choice, with CUDA and MPS mocked (this machine has neither)."""

from __future__ import annotations

import pytest
import torch

from convergence.core.errors import ConvergenceError
from convergence.models.device import select_device, select_dtype


def _backends(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"),
                                                 (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _backends(monkeypatch, cuda, mps)
    assert select_device("auto").type == expected


def test_named_devices(monkeypatch):
    _backends(monkeypatch, True, True)
    assert select_device("cuda:1") == torch.device("cuda:1")
    assert select_device("MPS").type == "mps"
    assert select_device("cpu").type == "cpu"


@pytest.mark.parametrize("name, message", [("cuda", "CUDA is not available"),
                                           ("mps", "MPS is not available"),
                                           ("tpu", "unknown model.device")])
def test_unavailable_or_unknown_device_is_a_clear_error(monkeypatch, name, message):
    _backends(monkeypatch, False, False)
    with pytest.raises(ConvergenceError, match=message):
        select_device(name)


def test_dtype_auto_is_fp16_on_cuda_only():
    assert select_dtype("cuda", "auto") == torch.float16
    assert select_dtype("mps", "auto") == torch.float32
    assert select_dtype("cpu", "auto") == torch.float32
    assert select_dtype("cuda", "float32") == torch.float32  # the opt-out
    assert select_dtype("cuda", "bf16") == torch.bfloat16


def test_no_float64_on_mps_and_unknown_dtype():
    with pytest.raises(ConvergenceError, match="MPS"):
        select_dtype("mps", "float64")
    assert select_dtype("cpu", "float64") == torch.float64
    with pytest.raises(ConvergenceError, match="unknown dtype"):
        select_dtype("cpu", "int8")


def test_backend_factory_uses_the_choice(monkeypatch):
    """model.device=auto on a CUDA machine loads in fp16 on cuda (loading itself mocked)."""
    import convergence.models as models
    from convergence.config.schema import ModelConfig
    _backends(monkeypatch, True, False)
    seen = {}

    def fake_load(cfg, device, dtype):
        seen.update(device=device, dtype=dtype)
        raise ConvergenceError("stop")

    monkeypatch.setattr(models, "load_pipeline", fake_load)
    with pytest.raises(ConvergenceError, match="stop"):
        models.diffusers_model(ModelConfig(name="diffusers", path="x"), 64, 64)
    assert seen == {"device": torch.device("cuda"), "dtype": torch.float16}
    with pytest.raises(ConvergenceError, match="stop"):
        models.diffusers_model(ModelConfig(name="diffusers", path="x", dtype="float32"), 64, 64)
    assert seen["dtype"] == torch.float32
