"""analysis.device: where the torch-based metrics run (issue 16, item 5). The machines
that run this suite have no GPU, so the device path is exercised on the CPU (the same
code, with tensors moved to ``metric_device()``) and device choice is tested by faking
what torch reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from convergence.analysis import metrics as M
from convergence.analysis.distances import analysis_device, noise_estimate
from convergence.core.errors import ConvergenceError


def _cells(device: str) -> pd.DataFrame:
    return pd.DataFrame({"device": [device, device]})


def test_auto_follows_the_device_the_cells_ran_on(monkeypatch):
    assert analysis_device("auto", _cells("cpu")) == (torch.device("cpu"), [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert analysis_device("auto", _cells("cuda:0"))[0] == torch.device("cuda:0")


def test_auto_falls_back_to_the_cpu_with_a_note(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device, notes = analysis_device("auto", _cells("cuda:0"))
    assert device == torch.device("cpu")
    assert len(notes) == 1 and "cuda:0" in notes[0]


def test_a_named_device_that_is_absent_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConvergenceError, match=r"'cuda' .*not available here \(use analysis.device=auto or cpu\)"):
        analysis_device("cuda", _cells("cpu"))
    with pytest.raises(ConvergenceError, match=r"unknown analysis.device 'tpu'"):
        analysis_device("tpu", _cells("cpu"))


def test_metrics_on_a_device_return_host_arrays_with_the_same_values(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.random((3, 24, 24, 3), dtype=np.float32)
    ref = np.clip(x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), 0, 1)
    seen = []
    real = M._to_unit_tensor
    monkeypatch.setattr(M, "_to_unit_tensor", lambda img: seen.append(real(img).device)
                        or real(img))
    plain = {n: M.compute(n, x, ref) for n in ("ssim", "gmsd")}
    with M.on_device(torch.device("cpu")):
        assert M.metric_device() == torch.device("cpu")
        on = {n: M.compute(n, x, ref) for n in ("ssim", "gmsd")}
        noise = noise_estimate(x.transpose(0, 3, 1, 2))
    assert seen and all(d == torch.device("cpu") for d in seen)
    for n in plain:  # same device, same kernels: equal to the bit
        assert isinstance(on[n], np.ndarray) and np.array_equal(on[n], plain[n])
    assert isinstance(noise, np.ndarray) and noise.shape == (3,)
    assert M.metric_device() == torch.device("cpu")  # the block restored the default
