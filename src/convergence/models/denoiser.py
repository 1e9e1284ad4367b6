"""A user's k-diffusion-style denoiser as a :class:`Model`, with no adapter to write.

``model._target_`` may name a callable ``D(x, sigma, **cond) -> denoised`` (a
``k_diffusion.layers.Denoiser``, ``k_diffusion.external.CompVisDenoiser`` / ``VDenoiser``, a
plain function) or a factory that returns one, called with ``model.params``. What the
harness needs beyond ``D`` (noise range, channels, display range, conditioning) comes from
``model.params`` or from the denoiser's attributes (:data:`ADAPTER_KEYS`), with defaults. A
factory that returns a full :class:`Model` keeps full control (models/__init__.py).
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from convergence.core.errors import ConvergenceError
from convergence.core.registry import load_object
from convergence.models.base import Conditioning, Model
from convergence.models.device import select_device, select_dtype

#: the keys of ``model.params`` the adapter reads (a factory gets them too when its
#: signature names them or takes ``**kwargs``), each also read as the denoiser's attribute
ADAPTER_KEYS = ("sigma_min", "sigma_max", "channels", "display_range", "conditioning")
#: EDM's noise range (Karras et al. 2022, table 1): the default of a continuous denoiser
#: that states none
DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX = 0.002, 80.0
DEFAULT_CHANNELS = 3
#: a denoiser's first two parameters carry these names (k-diffusion: ``input, sigma``)
_X_NAMES = ("x", "input", "x_t", "xt", "noised", "sample")
_SIGMA_NAMES = ("sigma", "sigmas", "s", "t")
#: display range derived from the model's own samples: Euler on a Karras schedule with
#: this many steps, for these seeds; the range is their [min, max] rounded outward
DERIVE_STEPS = 32
DERIVE_SEEDS = tuple(range(8))


def is_denoiser(obj: Any) -> bool:
    """Whether ``obj`` is itself ``D(x, sigma, ...)`` (judged by its first two parameters'
    names), rather than a factory."""
    fn = obj.forward if isinstance(obj, torch.nn.Module) else obj
    if inspect.isclass(obj) or not callable(fn):
        return False
    try:
        names = [p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):   # builtins without a signature
        return False
    return len(names) >= 2 and names[0] in _X_NAMES and names[1] in _SIGMA_NAMES


def call_factory(factory: Callable, params: Mapping[str, Any], where: str) -> Any:
    """``factory(**params)`` with the adapter's keys passed only where it accepts them; a
    keyword it does not take is one line naming the key and the accepted ones."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    accepted = [] if sig is None else [
        p.name for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    var_kw = sig is None or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    kwargs = {k: v for k, v in params.items()
              if var_kw or k in accepted or k not in ADAPTER_KEYS}
    bad = [k for k in kwargs if not var_kw and k not in accepted]
    if bad:
        raise ConvergenceError(_bad_key(where, bad[0], accepted))
    try:
        return factory(**kwargs)
    except TypeError as e:
        key = _keyword_in(str(e), kwargs)
        if key is None:
            raise
        raise ConvergenceError(_bad_key(where, key, accepted)) from None
    except ValueError as e:   # the factory's own check of a setting's value
        raise ConvergenceError(f"model {where} refused its params: {e}") from None


def _keyword_in(message: str, kwargs: Mapping[str, Any]) -> str | None:
    """The keyword a TypeError of a call names ("unexpected keyword argument 'x'")."""
    if "keyword" not in message:
        return None
    return next((k for k in kwargs if f"'{k}'" in message), None)


def _bad_key(where: str, key: str, accepted: list[str]) -> str:
    takes = ", ".join(accepted) or "no keywords"
    return (f"model.params.{key} is not accepted by {where} (it takes: {takes}; the harness "
            f"also reads {', '.join(ADAPTER_KEYS)})")


def _setting(key: str, params: Mapping[str, Any], denoiser: Any, default: Any) -> Any:
    """``params[key]``, else the denoiser's attribute ``key``, else ``default``."""
    if key in params and params[key] is not None:
        return params[key]
    value = getattr(denoiser, key, None)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    return default if value is None else value


def _conditioning(value: Any, where: str) -> Callable | None:
    """``conditioning``: None (unconditional) or ``fn(prompts, topics) -> (cond, uncond)``,
    each a dict of batch-first tensors passed to D as keywords (given as a callable or a
    ``module:attr`` path)."""
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        return load_object(value)
    raise ConvergenceError(f"model.params.conditioning of {where} must be a 'module:function' "
                           f"returning (cond, uncond) keyword dicts, or null; got {value!r}")


def _weights_digest(denoiser: Any) -> str | None:
    """sha256 of a torch module's parameters and buffers (None for a plain function): a
    retrained network gets new cells."""
    if not isinstance(denoiser, torch.nn.Module):
        return None
    h = hashlib.sha256()
    for k, v in sorted(denoiser.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class DenoiserModel(Model):
    """``D(x, sigma, **cond)`` in pixel space, (channels, height, width) per sample.

    Unconditional unless ``conditioning`` is given: its cond is ``{}``, so ``D`` is called
    with ``x`` and ``sigma`` only, and CFG is off (:attr:`conditional`). One channel is
    shown grey, more than three as the first three."""

    def __init__(self, denoiser: Callable, name: str, where: str, params: Mapping[str, Any],
                 device: torch.device, dtype: torch.dtype):
        self.denoiser = denoiser
        self.name = name
        self.where = where
        self.params = dict(params)
        self.device, self.dtype = device, dtype
        self.sigma_min = float(_setting("sigma_min", params, denoiser, DEFAULT_SIGMA_MIN))
        self.sigma_max = float(_setting("sigma_max", params, denoiser, DEFAULT_SIGMA_MAX))
        self.channels = int(_setting("channels", params, denoiser, DEFAULT_CHANNELS))
        if not 0 < self.sigma_min < self.sigma_max or not math.isfinite(self.sigma_max):
            raise ConvergenceError(f"model {name!r}: need 0 < sigma_min < sigma_max (finite), got "
                                   f"sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}")
        if self.channels < 1:
            raise ConvergenceError(f"model {name!r}: channels must be >= 1, got {self.channels}")
        self.encode = _conditioning(_setting("conditioning", params, denoiser, None), where)
        self.conditional = self.encode is not None
        sigmas = getattr(denoiser, "sigmas", None)  # k-diffusion's discrete VP wrappers
        if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1:
            self.alphas_cumprod = 1.0 / (1.0 + sigmas.detach().double().cpu() ** 2)
        self._weights = _weights_digest(denoiser)
        rng = _setting("display_range", params, denoiser, None)
        self.display_derived = rng is None or rng == "derive"
        self.display_range = (-math.inf, math.inf) if self.display_derived else _range(rng, name)

    def fingerprint(self) -> dict:
        own = getattr(self.denoiser, "fingerprint", None)
        plain = {k: v for k, v in self.params.items() if k != "conditioning"}
        return {"name": self.name, "denoiser": self.where, "params": plain,
                "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "channels": self.channels, "display_range": list(self.display_range),
                "display_derived": self.display_derived, "weights": self._weights,
                "dtype": str(self.dtype).removeprefix("torch."),
                "own": own() if callable(own) else own}

    def validate_size(self, width: int, height: int) -> None:
        return None   # a convolutional denoiser takes any multiple of 8 (validate.py)

    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        return (self.channels, height, width)

    def encode_prompts(self, prompts: list[str], topics: list[str]) -> Conditioning:
        if self.encode is None:
            return Conditioning(cond={}, uncond={})
        cond, uncond = self.encode(list(prompts), list(topics))
        return Conditioning(cond=dict(cond), uncond=dict(uncond))

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        out = self.denoiser(x.to(self.dtype), sigma.to(self.dtype), **(cond or {}))
        return out.to(x.dtype)

    def decode(self, x: torch.Tensor) -> np.ndarray:
        return to_rgb8(x, self.display_range)

    def derive_display_range(self, width: int, height: int) -> None:
        """The display range from the model's own samples (Euler, DERIVE_STEPS Karras steps,
        DERIVE_SEEDS), once per build: their [min, max] rounded outward to two significant
        digits. It is recorded in the fingerprint (and so in study.json and every cell)."""
        n = DERIVE_STEPS
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / 7), self.sigma_max ** (1 / 7)
        sigmas = (hi + ramp * (lo - hi)) ** 7
        x = self.initial_noise(list(DERIVE_SEEDS), width, height) * sigmas[0]
        cond = self.encode_prompts([""] * len(DERIVE_SEEDS), [""] * len(DERIVE_SEEDS)).uncond
        for i in range(n):
            s = torch.full((x.shape[0],), float(sigmas[i]), dtype=x.dtype, device=x.device)
            d = self.denoise(x, s, cond)
            x = d if i == n - 1 else x + (x - d) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        self.display_range = (_round_out(float(x.min()), math.floor),
                              _round_out(float(x.max()), math.ceil))
        if not all(math.isfinite(v) for v in self.display_range) or \
                self.display_range[0] >= self.display_range[1]:
            raise ConvergenceError(f"model {self.name!r}: cannot derive a display range from its "
                                   f"samples (got {self.display_range}); set "
                                   "model.params.display_range=[lo,hi]")


def _range(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConvergenceError(f"model {name!r}: display_range must be [lo, hi] with lo < hi, "
                               f"or 'derive'; got {value!r}")
    return lo, hi


def _round_out(v: float, rounding: Callable[[float], float]) -> float:
    """``v`` rounded away from the inside of the range to two significant digits."""
    if v == 0:
        return 0.0
    step = 10 ** (math.floor(math.log10(abs(v))) - 1)
    return float(rounding(v / step) * step)


def to_rgb8(x: torch.Tensor, display_range: tuple[float, float]) -> np.ndarray:
    """(B, C, H, W) samples -> (B, H, W, 3) uint8: one channel grey, two padded with a zero
    channel, more than three the first three; ``display_range`` maps to 0..255."""
    lo, hi = display_range
    x = x.detach().to(torch.float64).cpu()
    c = x.shape[1]
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    elif c == 2:
        x = torch.cat([x, torch.full_like(x[:, :1], lo)], 1)
    else:
        x = x[:, :3]
    img = ((x.clamp(lo, hi) - lo) * (255.0 / (hi - lo))).round()
    return img.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def denoiser_model(target: Any, where: str, model_cfg: Any, width: int, height: int) -> Model:
    """The model ``target`` makes: ``target`` itself when it is a denoiser, else what
    ``target(**model.params)`` returns (a denoiser, wrapped, or a full :class:`Model`)."""
    params = dict(getattr(model_cfg, "params", None) or {})
    if is_denoiser(target):
        made = target
        bad = [k for k in params if k not in ADAPTER_KEYS]
        if bad:
            raise ConvergenceError(f"model.params.{bad[0]}: {where} is a denoiser, not a factory; "
                                   f"its params are the harness's: {', '.join(ADAPTER_KEYS)}")
    else:
        made = call_factory(target, params, where)
    if isinstance(made, Model):
        return made
    if not callable(made):
        raise ConvergenceError(f"model {where!r} returned {type(made).__name__}, not a denoiser "
                               "D(x, sigma, **cond) or a convergence Model")
    device = select_device(model_cfg.device)
    dtype = select_dtype(device, "float32" if model_cfg.dtype == "auto" else model_cfg.dtype)
    if isinstance(made, torch.nn.Module):
        made = made.to(device, dtype).eval()
    model = DenoiserModel(made, model_cfg.name, where, params, device, dtype)
    if model.display_derived:
        model.derive_display_range(width, height)
    return model
