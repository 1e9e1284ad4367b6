"""The one interface between models and samplers (k-diffusion style).

A sampler only ever sees ``denoised = denoiser(x, sigma, **extra_args)``. Models
implement :class:`Model`; :class:`GuidedDenoiser` adds classifier-free guidance as
one batched call and :class:`CountingDenoiser` counts and times every call, so NFE is
measured rather than looked up. :class:`GuidedDenoiser` sends its rows to a ``call``
(the model's ``denoise`` by default), which is where the runner's gatherer
(``convergence.run.gather``) merges the calls of many cells into one model call.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convergence.core.errors import ConvergenceError
from convergence.models.comfy_facade import ModelSampling, model_sampling


@dataclass
class Conditioning:
    """Per-row conditioning for a batch: ``cond`` for the prompts, ``uncond`` for CFG.

    Both are whatever the model understands (topic log-weights for the analytic model,
    text embeddings for diffusers); ``extra`` carries model-specific tensors.
    """

    cond: Any
    uncond: Any
    extra: dict | None = None


class Model(ABC):
    """A diffusion model seen as a denoiser D(x, sigma, cond) in its own space."""

    #: short identity used in cell hashes and the store
    name: str = "model"
    #: the noise levels the model was trained on; schedules are built inside them
    sigma_min: float
    sigma_max: float
    #: VP models expose their discrete training schedule (DDIM/PLMS and diffusers
    #: schedulers need it); ``None`` for purely continuous models
    alphas_cumprod: torch.Tensor | None = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    #: the range of the float picture a person sees (the PNG clips it there and quantises
    #: it): the sample's for a model whose sample is the picture, the decoded image's for a
    #: latent model (:meth:`decode_float`). Key points are measured on the picture clipped
    #: to it. (-inf, inf): no float picture; the analysis measures the PNG
    display_range: tuple[float, float] = (-math.inf, math.inf)
    #: False for an unconditional model: its conditioning may be None or {}, and
    #: classifier-free guidance is off (:func:`require_guidance`)
    conditional: bool = True

    @property
    def sample_dtype(self) -> torch.dtype:
        """dtype of the samplers' state (x, sigma): float32 even for a half-precision
        network, which only sees its own input cast down, so noise levels and latents
        keep float32 precision (fp16 sigma makes SD's timestep 801 read as 800.93)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    @abstractmethod
    def fingerprint(self) -> dict:
        """Everything that changes the model's outputs (goes into each cell hash)."""

    @abstractmethod
    def validate_size(self, width: int, height: int) -> None:
        """Raise ConvergenceError if the model cannot make images of this size."""

    @abstractmethod
    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        """Shape of one sample (without batch) in model space."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str], topics: list[str]) -> Conditioning:
        """Conditioning for a batch, computed once per batch, never per step."""

    @abstractmethod
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        """E[x0 | x_sigma, cond] for a batch (``sigma`` has one entry per row)."""

    @abstractmethod
    def decode(self, x: torch.Tensor) -> np.ndarray:
        """Model-space samples -> uint8 RGB images of shape (B, H, W, 3)."""

    def decode_both(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(uint8 images, decoded float images or None), decoding once. A model whose
        sample is a latent returns the float RGB picture before 8-bit rounding, (B, H, W, 3)
        in :attr:`display_range`, which the runner stores so the analysis measures what the
        picture shows without rebuilding the model; None where the sample is the picture."""
        return self.decode(x), None

    def initial_noise(self, seeds: list[int], width: int, height: int) -> torch.Tensor:
        """Unit-variance noise, one CPU generator per cell, so images do not depend on
        the device or on which other cells share the batch."""
        shape = self.latent_shape(width, height)
        rows = [
            torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s)),
                        dtype=torch.float32)
            for s in seeds
        ]
        return torch.stack(rows).to(self.device, self.sample_dtype)

    @property
    def model_sampling(self) -> ModelSampling:
        """What ComfyUI samplers read from their model (models/comfy_facade.py)."""
        return model_sampling(self)

    def cat_cond(self, a: Any, b: Any) -> Any:
        """Concatenate two conditionings along the batch (for the batched CFG call)."""
        return cat_rows([a, b])

    def record(self, folder: Path) -> None:
        """Write into the study's ``folder`` what the analysis needs to use this model
        without building it again (the runner calls it once per run). Nothing by default:
        the analysis needs no model of a model whose cells carry their decoded pictures."""
        return None

    def row_bytes(self, width: int, height: int) -> int:
        """Rough peak memory of one row of a model call, for ``batch_size: auto``.

        The default assumes activations of ~64 latent-sized tensors per row; models with a
        better estimate (or a measured one) override it."""
        return 64 * math.prod(self.latent_shape(width, height)) * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


_LOCKS_GUARD = threading.Lock()


def model_lock(model: Model) -> threading.RLock:
    """One lock per model: the runner calls a model from several threads (the gatherer's
    model calls, each batch's prompt encoding and decoding), and parts of a pipeline are
    not thread-safe (a fast tokenizer's padding state is shared), so they take turns."""
    with _LOCKS_GUARD:
        lock = model.__dict__.get("_call_lock")
        if lock is None:
            lock = model.__dict__["_call_lock"] = threading.RLock()
        return lock


def require_guidance(model: Model, cfg_scales: list[float]) -> None:
    """An unconditional model has nothing to guide with: every CFG scale must be 1."""
    bad = [c for c in cfg_scales if c != 1.0]
    if not model.conditional and bad:
        raise ConvergenceError(f"model {model.name!r} is unconditional: classifier-free guidance "
                               f"is off, so cfg must be [1.0], got cfg={list(cfg_scales)}")


def cat_rows(parts: list[Any]) -> Any:
    """Concatenate conditionings (tensors or dicts of them; None: an unconditional model's)
    along the batch dimension."""
    if parts[0] is None:
        return None
    if isinstance(parts[0], dict):
        return {k: cat_rows([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def take_rows(cond: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a conditioning (tensor or dict of tensors, or None)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: take_rows(v, start, stop) for k, v in cond.items()}
    return cond[start:stop]


DenoiseCall = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class GuidedDenoiser:
    """Classifier-free guidance as one batched model call (cond and uncond rows).

    ``call(x, sigma, cond)`` evaluates the rows (``model.denoise`` unless the runner hands
    in its gatherer's call, which merges them with other cells' rows)."""

    def __init__(self, model: Model, call: DenoiseCall | None = None):
        self.model = model
        self.call = call or model.denoise
        self.rows_evaluated = 0

    @property
    def inner_model(self) -> Model:
        """ComfyUI's path to the model (``model.inner_model.inner_model.model_sampling``)."""
        return self.model

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *, conditioning: Conditioning,
                 cfg_scale: float = 1.0,
                 post_cfg: Callable[[torch.Tensor], None] | None = None,
                 seed: int | None = None, model_options: dict | None = None) -> torch.Tensor:
        """``post_cfg`` receives the unconditional prediction (CFG++ samplers renoise
        with it). Asking for it evaluates the unconditional rows even at CFG 1, where the
        guided output is then uncond + (cond - uncond) * 1: what ComfyUI does for its CFG++
        samplers (their post-CFG hook sets ``disable_cfg1_optimization``). ``seed`` and
        ``model_options`` are what ComfyUI samplers find in extra_args; unused here."""
        sigma = sigma.to(x.device, torch.promote_types(x.dtype, torch.float32))
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if cfg_scale == 1.0 and post_cfg is None:
            self.rows_evaluated += x.shape[0]
            return self.call(x, sigma, conditioning.cond)
        both = self.model.cat_cond(conditioning.cond, conditioning.uncond)
        self.rows_evaluated += 2 * x.shape[0]
        out = self.call(torch.cat([x, x]), torch.cat([sigma, sigma]), both)
        cond_out, uncond_out = out.chunk(2)
        if post_cfg is not None:
            post_cfg(uncond_out)
        # in place, the same IEEE operations as uncond + (cond - uncond) * scale (an
        # addition's operands commute exactly): one temporary instead of three
        return (cond_out - uncond_out).mul_(cfg_scale).add_(uncond_out)


class CountingDenoiser:
    """Counts denoiser calls (NFE per image, k-diffusion sense) and their time.

    ``calls`` is the NFE of every image in the batch; ``rows_evaluated`` is the work
    actually done (a CFG call evaluates two rows per image).
    """

    def __init__(self, inner: GuidedDenoiser, check_finite: bool = True):
        self.inner = inner
        self.calls = 0
        self.model_seconds = 0.0
        self.check_finite = check_finite
        self.sigmas_seen: list[float] = []

    @property
    def rows_evaluated(self) -> int:
        return self.inner.rows_evaluated

    @property
    def inner_model(self) -> GuidedDenoiser:
        """ComfyUI's ``model.inner_model`` (its CFG guider)."""
        return self.inner

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        start = time.perf_counter()
        out = self.inner(x, sigma, **extra_args)
        if out.device.type != "cpu":
            torch.cuda.synchronize() if out.device.type == "cuda" else None
        self.model_seconds += time.perf_counter() - start
        self.calls += 1
        s = sigma.flatten()[0] if sigma.ndim else sigma
        self.sigmas_seen.append(float(s))
        # a finite sum means every value is finite (NaN and inf propagate); only a sum that
        # is not (NaN/inf, or finite values overflowing it) is checked value by value
        if self.check_finite and not torch.isfinite(out.sum()) and not torch.isfinite(out).all():
            bad = (~torch.isfinite(out.flatten(1))).any(1).nonzero().flatten().tolist()
            raise NonFiniteSample(bad, float(s))
        return out


class NonFiniteSample(ConvergenceError):
    """NaN or inf appeared in the model output; the runner names the cells."""

    def __init__(self, rows: list[int], sigma: float):
        self.rows = rows
        self.sigma = sigma
        super().__init__(f"NaN/inf in the denoiser output at sigma={sigma:.4g} (batch rows {rows})")
