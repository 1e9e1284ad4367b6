"""Stable Diffusion 1.x / 2.x / SDXL through diffusers, seen as a k-diffusion denoiser
(SD3 and other rectified-flow pipelines: models/flow_matching.py).

The harness works in the VE parameterisation of k-diffusion: ``x`` is the latent scaled
by 1/sqrt(ā_t), so x = x0 + sigma * eps with sigma = sqrt((1 - ā_t) / ā_t). The UNet
sees the VP latent ``x / sqrt(sigma² + 1)`` at the timestep whose sigma that is, and its
eps or v prediction is turned into D(x, sigma) = E[x0 | x]. That is what lets every
sampler of the harness (k-diffusion, CompVis, diffusers schedulers) drive the same
UNet, and why the images equal those of ``StableDiffusionPipeline`` itself.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convergence.core.errors import ConvergenceError
from convergence.models.base import Conditioning, Model
from convergence.models.weights import weights_digest

#: pipeline folders must hold these (model_index.json names the components) and a
#: denoising network: a UNet (SD 1.x/2.x/SDXL) or a transformer (SD3)
_REQUIRED = ("vae", "scheduler")
_NETWORKS = ("unet", "transformer")
#: prompt lists whose embeddings a model keeps (encode_prompts): a few batches' worth, so
#: memory stays small (SD 1.x: 0.5 MB per prompt, cond and uncond)
ENCODED_KEPT = 8


def _looks_local(path: str) -> bool:
    """A hub id is ``owner/name``; anything else (absolute, ./, ~, or existing) is a folder."""
    p = Path(os.path.expanduser(path))
    return p.exists() or p.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1


def _absent_components(path: Path) -> dict[str, None]:
    """Components a local folder's model_index.json lists as ``[null, null]`` (an SD3
    saved without its T5 encoder): passed as None, as ``from_pretrained`` needs them."""
    try:
        parts = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: None for k, v in parts.items()
            if not k.startswith("_") and isinstance(v, list) and all(x is None for x in v)}


def _check_local_folder(path: Path) -> None:
    if not path.exists():
        raise ConvergenceError(f"model.path {str(path)!r} does not exist")
    if not path.is_dir():
        raise ConvergenceError(f"model.path {str(path)!r} is a file, not a diffusers pipeline folder "
                               "(single-file .ckpt/.safetensors checkpoints are not supported)")
    index = path / "model_index.json"
    if not index.is_file():
        raise ConvergenceError(f"model.path {str(path)!r} is not a diffusers pipeline folder "
                               "(no model_index.json)")
    try:
        parts = json.loads(index.read_text())
    except (OSError, ValueError) as e:
        raise ConvergenceError(f"model.path {str(path)!r}: unreadable model_index.json ({e})") from None
    missing = [c for c in _REQUIRED if c not in parts]
    if not any(n in parts for n in _NETWORKS):
        missing.append("a unet or transformer")
    if missing or not any(k.startswith("text_encoder") for k in parts):
        raise ConvergenceError(f"model.path {str(path)!r} is not a text-to-image diffusion pipeline "
                               f"(model_index.json lacks {', '.join(missing) or 'a text encoder'})")


def load_pipeline(model_cfg, device: torch.device, dtype: torch.dtype):
    """``from_pretrained`` with the project's safety defaults (safetensors only unless
    ``model.allow_pickle``; no network when offline or ``model.local_files_only``)."""
    from diffusers import DiffusionPipeline

    path = model_cfg.path
    if path is None or str(path).strip() in ("", "???"):
        raise ConvergenceError("model=diffusers needs model.path=<hub id or local folder>")
    path = str(path)
    local = _looks_local(path)
    if local:
        path = os.path.expanduser(path)
        _check_local_folder(Path(path))
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "use_safetensors": not model_cfg.allow_pickle,
        "local_files_only": bool(model_cfg.local_files_only or offline),
    }
    if model_cfg.variant:
        kwargs["variant"] = model_cfg.variant
    if local:
        kwargs.update(_absent_components(Path(path)))
    try:
        pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
    except ConvergenceError:
        raise
    except Exception as e:  # diffusers raises OSError/ValueError/EnvironmentError variously
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ""
        if not model_cfg.allow_pickle and "safetensors" in str(e).lower():
            hint = " (only .safetensors weights are loaded; model.allow_pickle=true opts in to pickles)"
        elif not local and kwargs["local_files_only"]:
            hint = " (offline: the hub id must already be in the local cache)"
        raise ConvergenceError(f"cannot load diffusers model {path!r}: {first}{hint}") from None
    if getattr(pipe, "vae", None) is None or all(getattr(pipe, n, None) is None for n in _NETWORKS):
        raise ConvergenceError(f"model.path {path!r} has no vae and unet/transformer; "
                               "not a latent diffusion pipeline")
    if not hasattr(pipe, "encode_prompt"):
        raise ConvergenceError(f"pipeline {type(pipe).__name__} at {path!r} has no text encoder "
                               "interface (encode_prompt); use an SD 1.x/2.x/SDXL/SD3 pipeline")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class LatentPipelineModel(Model):
    """What every latent text-to-image pipeline shares: its network (UNet or transformer),
    VAE, scheduler config, sizes, fingerprint and decoding. Subclasses say how the
    network's output becomes D(x, sigma)."""

    name = "diffusers"
    #: the decoded image's range (decode_float: the pipeline's image processor maps the
    #: VAE's [-1, 1] to [0, 1] and clamps there before 8-bit rounding)
    display_range = (0.0, 1.0)
    #: scheduler settings that change the model's noise levels (enter the fingerprint)
    schedule_keys: tuple[str, ...] = ()

    def __init__(self, pipe, model_cfg, width: int, height: int, device: torch.device,
                 dtype: torch.dtype):
        self.pipe = pipe
        self.path = str(model_cfg.path)
        self.device, self.dtype = device, dtype
        self.net = pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet
        self.vae = pipe.vae
        self.width, self.height = width, height
        #: the model's own scheduler settings; diffusers-scheduler samplers start from them
        self.scheduler_config = dict(pipe.scheduler.config)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = int(self.net.config.in_channels)
        if model_cfg.attention_slicing and hasattr(pipe, "enable_attention_slicing"):
            pipe.enable_attention_slicing()
        if model_cfg.vae_tiling:
            self.vae.enable_tiling()
        #: Hugging Face fast tokenizers are not thread-safe, and the runner encodes the
        #: prompts of several batches from worker threads at once (cross-cell batching)
        self._encode_lock = threading.Lock()
        #: the last ENCODED_KEPT prompt lists' embeddings, most recent last
        self._encoded: OrderedDict[tuple[str, ...], Conditioning] = OrderedDict()

    def encode_prompts(self, prompts: list[str], topics: list[str]) -> Conditioning:
        """Text embeddings for the batch, computed once per batch (never per step), and
        once for a prompt list that recent batches had: a study's batches repeat a few
        prompt lists (the guide's 48 batches share one), and the same list gives the same
        embeddings. Callers do not modify them (cat_cond and take_rows make new tensors)."""
        key = tuple(prompts)
        with self._encode_lock, torch.no_grad():
            out = self._encoded.pop(key, None)
            if out is None:
                out = self._encode(list(prompts))
            self._encoded[key] = out
            while len(self._encoded) > ENCODED_KEPT:
                self._encoded.popitem(last=False)
            return out

    def _encode(self, prompts: list[str]) -> Conditioning:
        raise NotImplementedError

    # -- Model interface -------------------------------------------------------------
    def fingerprint(self) -> dict:
        """Path, the architecture and schedule settings that change outputs, and dtype.

        Attention slicing and VAE tiling change memory use, not the maths, and the device
        only changes rounding, so neither enters the cell hash."""
        net = self.net.config
        return {
            "name": self.name, "path": self.path, "pipeline": type(self.pipe).__name__,
            "weights": weights_digest(self.path),  # changed weights at one path: new cells
            "dtype": str(self.dtype).replace("torch.", ""),
            "unet": {k: net.get(k) for k in ("sample_size", "in_channels", "cross_attention_dim",
                                             "block_out_channels", "layers_per_block",
                                             "num_layers", "patch_size", "joint_attention_dim")
                     if k in net},
            "vae_scaling_factor": self.vae.config.get("scaling_factor"),
            "schedule": {k: self.scheduler_config.get(k) for k in self.schedule_keys},
        }

    @property
    def size_step(self) -> int:
        """Image sizes must be multiples of this (VAE downsampling x transformer patches)."""
        return max(8, self.vae_scale_factor * int(self.net.config.get("patch_size") or 1))

    def validate_size(self, width: int, height: int) -> None:
        step = self.size_step
        for label, v in (("width", width), ("height", height)):
            if not isinstance(v, int) or v < step or v % step:
                raise ConvergenceError(f"{self.path!r} cannot make {label}={v!r}: use a positive "
                                       f"multiple of {step} (the VAE downsamples by "
                                       f"{self.vae_scale_factor})")

    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        self.validate_size(width, height)
        f = self.vae_scale_factor
        return (self.latent_channels, height // f, width // f)

    @torch.no_grad()
    def decode_float(self, x: torch.Tensor) -> np.ndarray:
        """Latents -> float RGB in [0, 1], (B, H, W, 3), before 8-bit rounding."""
        vae = self.vae
        latents = x.to(torch.float32) / vae.config.scaling_factor
        latents = latents + (vae.config.get("shift_factor") or 0.0)  # SD3's VAE is shifted
        upcast = self.dtype == torch.float16 and vae.config.get("force_upcast", False)
        if upcast:  # the SDXL VAE overflows in fp16 (the pipeline upcasts it too)
            vae.to(torch.float32)
        try:
            images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        finally:
            if upcast:
                vae.to(self.dtype)
        images = (images.to(torch.float32) / 2 + 0.5).clamp(0, 1)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def decode(self, x: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 RGB (B, H, W, 3), rounded as the pipeline's image processor does."""
        return self.decode_both(x)[0]

    def decode_both(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB, float RGB in [0, 1]) from one VAE decode."""
        floats = self.decode_float(x)
        return (floats * 255).round().astype(np.uint8), floats


class DiffusersModel(LatentPipelineModel):
    """SD 1.x / 2.x / SDXL: a UNet trained on a discrete VP schedule, eps or v prediction."""

    schedule_keys = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps",
                     "prediction_type", "trained_betas", "rescale_betas_zero_snr")

    def __init__(self, pipe, model_cfg, width: int, height: int, device: torch.device,
                 dtype: torch.dtype):
        super().__init__(pipe, model_cfg, width, height, device, dtype)
        self.unet = self.net
        self.is_sdxl = hasattr(pipe, "text_encoder_2")
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConvergenceError(f"{self.path!r}: prediction_type {self.prediction_type!r} is not "
                                   "supported (epsilon or v_prediction)")
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.to(torch.float64).cpu()
        sig = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.sigma_min, self.sigma_max = float(sig[0]), float(sig[-1])
        self._log_sigmas = sig.log()  # float64, CPU (sigma_to_t)

    def _encode(self, prompts: list[str]) -> Conditioning:
        """The negative prompt follows each pipeline's own default for ``negative_prompt=None``:
        "" for SD 1.x/2.x, zeros for SDXL (``force_zeros_for_empty_prompt``)."""
        if not self.is_sdxl:
            cond, uncond = self.pipe.encode_prompt(list(prompts), self.device, 1, True, None)
            return Conditioning(cond={"encoder_hidden_states": cond},
                                uncond={"encoder_hidden_states": uncond})
        cond, uncond, pooled, neg_pooled = self.pipe.encode_prompt(
            list(prompts), device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=True)
        proj = (int(pooled.shape[-1]) if self.pipe.text_encoder_2 is None
                else self.pipe.text_encoder_2.config.projection_dim)
        size = (self.height, self.width)
        time_ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=cond.dtype,
                                               text_encoder_projection_dim=proj)
        time_ids = time_ids.to(self.device).repeat(len(prompts), 1)
        return Conditioning(
            cond={"encoder_hidden_states": cond, "text_embeds": pooled, "time_ids": time_ids},
            uncond={"encoder_hidden_states": uncond, "text_embeds": neg_pooled,
                    "time_ids": time_ids})

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Training timestep of each sigma (log-sigma interpolation, k-diffusion's rule),
        in float64 on the CPU, snapped to the integer when it is one up to float32
        rounding of sigma: the UNet then sees 801 where the pipeline passes 801."""
        log_sigma = sigma.detach().to("cpu", torch.float64).log()
        dists = log_sigma - self._log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self._log_sigmas.shape[0] - 2)
        high = low + 1
        lo, hi = self._log_sigmas[low], self._log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        t = (1 - w) * low + w * high
        near = (t - t.round()).abs() < 1e-3
        return torch.where(near, t.round(), t).to(torch.float32)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        s = sigma.to(x.device, torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
        c_in = 1 / (s**2 + 1).sqrt()
        z = (x.to(torch.float32) * c_in).to(self.dtype)
        t = self.sigma_to_t(sigma.reshape(-1)).to(x.device)
        kwargs: dict[str, Any] = {"encoder_hidden_states": cond["encoder_hidden_states"]}
        if self.is_sdxl:
            kwargs["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"],
                                           "time_ids": cond["time_ids"]}
        out = self.unet(z, t, return_dict=False, **kwargs)[0].to(torch.float32)
        xf = x.to(torch.float32)
        if self.prediction_type == "epsilon":
            denoised = xf - s * out
        else:  # v-prediction: x0 = alpha * z - sigma_vp * v
            denoised = xf * c_in**2 - out * s * c_in
        return denoised.to(x.dtype)


@contextmanager
def quiet_library() -> Iterator[None]:
    """Silence diffusers' and transformers' log lines and progress bars while a model loads: a
    failure becomes our one line, so its multi-line account is noise. ``--debug``
    (CONVERGENCE_DEBUG=1) keeps them."""
    if os.environ.get("CONVERGENCE_DEBUG") == "1":
        yield
        return
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog
    saved = [(m, m.get_verbosity(), m.is_progress_bar_enabled()) for m in (dlog, tlog)]
    for m in (dlog, tlog):
        m.set_verbosity(logging.CRITICAL + 1)
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, level, bars in saved:
            m.set_verbosity(level)
            if bars:
                m.enable_progress_bar()
