"""Metric registry: batched, deterministic, zero on identical inputs, LPIPS honest."""

import numpy as np
import pytest

from convergence.analysis import metrics as M
from convergence.core.errors import ConvergenceError


def test_all_metrics_batched_and_deterministic():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    noisy = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    for name in ("psnr", "ssim", "haarpsi", "gmsd", "flip"):
        a = M.compute(name, noisy, img)
        assert a.shape == (3,) and np.array_equal(a, M.compute(name, noisy, img))
        same = M.compute(name, img, img)
        better = same > a if not M.get_metric(name).lower_is_better else same < a
        assert better.all(), name
    x = rng.normal(size=(4, 3, 8, 8))
    assert np.allclose(M.compute("rmse", x, x + 0.1), 0.1)
    assert np.allclose(M.compute("mse", x, x + 0.1), 0.01)


def test_lpips_unavailable_is_one_clear_message_and_plumbing_works(tmp_path, monkeypatch):
    # an empty cache: the weights are missing whatever this machine has fetched
    # (with them, tests/integration/test_lpips_weights.py checks the metric itself)
    monkeypatch.setenv("CONVERGENCE_CACHE", str(tmp_path))
    reason = M.lpips_unavailable_reason()
    assert reason and "python -m convergence.analysis.lpips_weights" in reason
    with pytest.raises(ConvergenceError, match="LPIPS is unavailable"):
        M.get_metric("lpips")
    ok, notes = M.available(["rmse", "lpips"])
    assert ok == ["rmse"] and len(notes) == 1 and "\n" not in notes[0]
    assert M.compute("rmse", np.zeros((1, 2)), np.ones((1, 2)))[0] == 1.0  # offline metrics as before
    import lpips
    net = lpips.LPIPS(pretrained=False, pnet_rand=True, verbose=False).eval()
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert np.allclose(M.lpips_distance(img, img, net), 0, atol=1e-6)
    assert M.lpips_distance(img, img[::-1].copy(), net).shape == (2,)


def test_ssim_equals_torchmetrics_default():
    """Our separable SSIM is the same definition as torchmetrics' default one."""
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    noisy = np.clip(img + rng.normal(0, 30, img.shape), 0, 255).astype(np.uint8)
    ours = M.compute("ssim", noisy, img)
    ref = tm_ssim(M._to_unit_tensor(noisy).double(), M._to_unit_tensor(img).double(),
                  data_range=1.0, reduction="none").numpy()
    assert np.allclose(ours, ref, atol=1e-5), (ours, ref)


def test_visible_counts_pixels_beyond_one_level_on_an_absolute_scale():
    """"converged" on the display: a pixel moved by one 8-bit level does not count, by two it
    does, whatever the picture's own contrast (a flat grey picture as a busy one)."""
    rng = np.random.default_rng(0)
    busy = rng.integers(10, 240, (1, 8, 8, 3)).astype(np.float64) / 255
    flat = np.full((1, 8, 8, 3), 128 / 255)
    for pic in (busy, flat):
        one, two = pic.copy(), pic.copy()
        one[0, :4, :, 0] += 1 / 255   # half the rows, one level, one channel
        two[0, :2, :, 1] += 2 / 255   # a quarter of the rows, two levels
        assert M.compute("visible", one, pic)[0] == 0.0
        assert M.compute("visible", two, pic)[0] == 0.25
