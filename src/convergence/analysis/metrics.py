"""Distance metrics between a batch of samples and a batch of references, by name.

Every metric is one decorated function over a whole batch (so scoring a study is a few
vectorised calls, not one call per pair) and returns one value per row. Metrics on
``space="sample"`` see the float samples in model space (PNG quantisation would hide every
difference below 1/255); metrics on ``space="image"`` see RGB pictures as people do: the
analysis hands them float32 in [0, 1] (the decoded image before 8-bit rounding, or the
analytic model's clipped sample), and uint8 images are accepted too (divided by 255).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch

from convergence.core.errors import ConvergenceError
from convergence.core.registries import METRICS, register_metric

MetricFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: where the torch-based metrics (ssim, haarpsi, gmsd, lpips, the noise estimate) compute:
#: the analysis sets it to the device the study ran on (analysis.device); numpy metrics
#: (mse, rmse, rel_rmse, psnr) stay on the CPU, where they are memory-bound and cheap
_DEVICE: ContextVar[torch.device | None] = ContextVar("metric_device", default=None)


@contextmanager
def on_device(device: torch.device | str) -> Iterator[None]:
    """Run the torch-based metrics on ``device`` inside the block (inputs and results stay
    numpy arrays on the host)."""
    token = _DEVICE.set(torch.device(device))
    try:
        yield
    finally:
        _DEVICE.reset(token)


def metric_device() -> torch.device:
    """The device torch-based metrics compute on (see :func:`on_device`; the CPU outside)."""
    return _DEVICE.get() or torch.device("cpu")


def host(t: torch.Tensor) -> np.ndarray:
    """A metric's result back on the host as numpy."""
    return t.detach().cpu().numpy()


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: MetricFn
    #: "sample" (float arrays in model space, (B, ...)) or "image" ((B, H, W, 3) RGB: float
    #: in [0, 1], or uint8)
    space: str
    #: False for similarities (psnr, ssim, haarpsi): a key-point threshold is then a floor
    lower_is_better: bool = True
    description: str = ""


def metric_spec(name: str, obj, meta: dict) -> MetricSpec:
    """A MetricSpec from a plain ``fn(x, ref)`` and its metadata (the registry's ``wrap``):
    ``space`` "sample" (default) or "image", ``lower_is_better``, ``description``."""
    if isinstance(obj, MetricSpec):
        return obj
    merged = {"space": "sample", **getattr(obj, "convergence_meta", {}), **meta}
    if merged["space"] not in ("sample", "image"):
        raise ValueError(f"metric space must be 'sample' or 'image', got {merged['space']!r}")
    return MetricSpec(name, obj, merged["space"], bool(merged.get("lower_is_better", True)),
                      merged.get("description") or (obj.__doc__ or "").strip().split("\n")[0])


def get_metric(name: str) -> MetricSpec:
    """The metric registered as ``name``, or a ConvergenceError listing the known ones."""
    spec = METRICS.get(name)
    if spec.name == "lpips":
        reason = lpips_unavailable_reason()
        if reason:
            raise ConvergenceError(f"LPIPS is unavailable: {reason}")
    return spec


def compute(name: str, x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``name`` between matching rows of ``x`` and ``ref`` (float64, one value per row)."""
    spec = get_metric(name)
    if x.shape != ref.shape:
        raise ValueError(f"metric {name}: shapes differ {x.shape} vs {ref.shape}")
    if len(x) == 0:
        return np.zeros(0)
    return np.asarray(spec.fn(x, ref), dtype=np.float64).reshape(len(x))


# -- model space ------------------------------------------------------------------------
@register_metric("mse", space="sample", description="mean squared error in model space")
def mse(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    # asarray: no copy of float64 input (the analysis scores thousands of pairs per reference)
    diff = (np.asarray(x, dtype=np.float64).reshape(len(x), -1)
            - np.asarray(ref, dtype=np.float64).reshape(len(ref), -1))
    return np.einsum("ij,ij->i", diff, diff) / diff.shape[1]


@register_metric("rmse", space="sample", description="root mean squared error in model space")
def rmse(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.sqrt(mse(x, ref))


@register_metric("rel_rmse", space="sample",
                 description="rmse divided by the reference's own standard deviation")
def rel_rmse(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """RMSE in units of the reference's variation (std over all its values): unchanged by
    any brightness/contrast change a*x + b of both pictures, and the same definition in
    pixel and in latent space, so one set of thresholds serves the analytic and real
    models (docs/analysis.md)."""
    r = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    mean = r.mean(1)  # var = E[r^2] - E[r]^2: no temporary copy of the batch (page faults)
    std = np.sqrt(np.maximum(np.einsum("ij,ij->i", r, r) / r.shape[1] - mean**2, 0.0))
    return rmse(x, ref) / np.maximum(std, 1e-12)


# -- images -----------------------------------------------------------------------------
def unit_image(img: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) RGB as float32 in [0, 1]: uint8 divided by 255, floats as they are."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    return np.asarray(img, dtype=np.float32)


def _to_unit_tensor(img: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) RGB (uint8 or floats in [0, 1]) -> float32 (B, 3, H, W) in [0, 1], on
    the metrics' device."""
    t = torch.from_numpy(np.ascontiguousarray(unit_image(img))).permute(0, 3, 1, 2)
    return t.to(metric_device())


@register_metric("psnr", space="image", lower_is_better=False,
                 description="peak signal-to-noise ratio in dB (inf for identical images)")
def psnr(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    d = unit_image(x).astype(np.float64) - unit_image(ref)
    err = (d**2).reshape(len(x), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / err)


def _gauss_valid(t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, "valid" positions only, of (N, 1, H, W), as a sum of
    shifted slices (torch's float64 conv2d on a CPU is ~10x slower than this)."""
    n = len(k)
    h, w = t.shape[-2] - n + 1, t.shape[-1] - n + 1
    v = sum(k[i] * t[..., i:i + h, :] for i in range(n))
    return sum(k[i] * v[..., i:i + w] for i in range(n))


#: the just-visible difference of the "visible" metric, in 8-bit levels: a pixel whose 8-bit
#: value moves by at most this much in every channel shows no change (docs/analysis.md)
VISIBLE_LEVELS = 1


@register_metric("visible", space="image",
                 description="fraction of pixels more than one 8-bit level from the reference")
def visible(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The fraction of pixels whose 8-bit value (what the PNG shows) differs by more than
    :data:`VISIBLE_LEVELS` in any channel: an absolute display scale, the same for a dark
    low-contrast picture as for a bright one, which a distance relative to the picture's
    own contrast is not ("converged", docs/analysis.md)."""
    diff = np.abs(np.round(unit_image(x).astype(np.float64) * 255)
                  - np.round(unit_image(ref).astype(np.float64) * 255)).max(-1)
    return (diff > VISIBLE_LEVELS).reshape(len(x), -1).mean(1)


@register_metric("ssim", space="image", lower_is_better=False,
                 description="structural similarity (Gaussian window 11, sigma 1.5)")
def ssim(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Same definition as torchmetrics' default SSIM (reflection padding by 5, mean of the
    SSIM map over every pixel, variances clamped at 0), computed with a separable kernel in
    float32 (as torchmetrics): several times faster on a CPU and no torchmetrics import (seconds on a start).
    tests/unit/test_metrics.py checks the equality."""
    if len(x) > 64:  # chunks keep the float64 stack small (page faults cost more than math)
        return np.concatenate([ssim(x[i:i + 64], ref[i:i + 64]) for i in range(0, len(x), 64)])
    a = _to_unit_tensor(x)
    b = _to_unit_tensor(ref)
    k = torch.arange(11, dtype=torch.float32, device=a.device) - 5
    k = torch.exp(-0.5 * (k / 1.5) ** 2)
    k = k / k.sum()
    n, c, h, w = a.shape
    a = torch.nn.functional.pad(a, (5, 5, 5, 5), mode="reflect")
    b = torch.nn.functional.pad(b, (5, 5, 5, 5), mode="reflect")
    stack = torch.cat([a, b, a * a, b * b, a * b]).reshape(5 * n * c, 1, h + 10, w + 10)
    mu_a, mu_b, aa, bb, ab = _gauss_valid(stack, k).reshape(5, n, c, h, w)
    c1, c2 = 0.01**2, 0.03**2
    va, vb = (aa - mu_a**2).clamp(min=0), (bb - mu_b**2).clamp(min=0)
    cov = ab - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    return host(m.reshape(n, -1).mean(1))


@register_metric("haarpsi", space="image", lower_is_better=False,
                 description="Haar wavelet perceptual similarity (piq)")
def haarpsi(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    import piq
    return host(piq.haarpsi(_to_unit_tensor(x), _to_unit_tensor(ref), reduction="none"))


@register_metric("gmsd", space="image", description="gradient magnitude similarity deviation (piq)")
def gmsd(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    import piq
    return host(piq.gmsd(_to_unit_tensor(x), _to_unit_tensor(ref), reduction="none"))


@register_metric("flip", space="image", description="NVIDIA FLIP mean error, LDR (flip-evaluator)")
def flip(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """One library call per pair, and its cost is compute, not overhead (~8 ms at 64x64,
    ~125 ms at 256x256 on one core): it is opt-in (analysis.metrics) for that reason."""
    import flip_evaluator
    out = np.empty(len(x))
    for i in range(len(x)):  # the library takes one pair per call
        a = np.ascontiguousarray(unit_image(ref[i:i + 1])[0])
        b = np.ascontiguousarray(unit_image(x[i:i + 1])[0])
        out[i] = flip_evaluator.evaluate(a, b, "LDR", applyMagma=False)[1]
    return out


# -- LPIPS, with the converted v0.1 weights (analysis/lpips_weights.py) -----------------
LPIPS_NET = "alex"


def lpips_unavailable_reason(net: str = LPIPS_NET) -> str | None:
    """Why LPIPS cannot run here (None if it can): its converted weights must be in the
    cache, intact; ``python -m convergence.analysis.lpips_weights`` puts them there."""
    try:
        import lpips  # noqa: F401
    except ImportError as e:
        return f"the lpips package does not import ({e})"
    return _lpips_weights().check_cached(net)


_LPIPS_NETS: dict[tuple, torch.nn.Module] = {}


def _lpips_weights():
    """The weights module, imported on first use like ``lpips`` itself: imported by the
    package, ``python -m convergence.analysis.lpips_weights`` would run a second copy."""
    from convergence.analysis import lpips_weights
    return lpips_weights


def lpips_distance(x: np.ndarray, ref: np.ndarray, net: torch.nn.Module | None = None) -> np.ndarray:
    """LPIPS between RGB image batches; ``net`` lets tests pass an untrained network."""
    a = _to_unit_tensor(x) * 2 - 1
    b = _to_unit_tensor(ref) * 2 - 1
    if net is None:
        key = (LPIPS_NET, str(a.device))
        if key not in _LPIPS_NETS:
            _LPIPS_NETS[key] = _lpips_weights().lpips_model(LPIPS_NET).to(a.device)
        net = _LPIPS_NETS[key]
    with torch.no_grad():
        return host(net(a, b).reshape(len(x)))


#: the smallest picture side LPIPS' AlexNet takes: below it the feature maps of its second
#: pooling layer are empty (a 16x16 picture fails in torch)
LPIPS_MIN_SIZE = 32


@register_metric("lpips", space="image", description="LPIPS (AlexNet), when its weights are cached")
def lpips_metric(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return lpips_distance(x, ref)


def usable_at(names: list[str], side: int) -> tuple[list[str], list[str]]:
    """:func:`available`, less LPIPS on pictures smaller than :data:`LPIPS_MIN_SIZE`."""
    ok, notes = available(names)
    if "lpips" in ok and side < LPIPS_MIN_SIZE:
        ok.remove("lpips")
        notes.append(f"lpips: left out, the pictures ({side} px) are smaller than AlexNet's "
                     f"{LPIPS_MIN_SIZE} px minimum")
    return ok, notes


def available(names: list[str]) -> tuple[list[str], list[str]]:
    """Split ``names`` into (usable here, one-line messages about the others)."""
    ok, notes = [], []
    for n in names:
        METRICS.canonical(n)  # an unknown name fails with the close ones
        reason = lpips_unavailable_reason() if n == "lpips" else None
        if reason:
            notes.append(f"LPIPS is unavailable: {reason}")
        else:
            ok.append(n)
    return ok, notes

