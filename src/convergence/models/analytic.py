"""The embedded analytic model: a Gaussian mixture over scikit-image's bundled pictures.

Each component is one picture: mean = the picture at the requested size, covariance =
low-rank PCA of jittered crops + a small isotropic term. For such a mixture the ideal
denoiser E[x0 | x_sigma] is closed-form (Wiener filter per component, weighted by the
posterior responsibilities), so the probability-flow ODE has a true solution that
:func:`exact_solution` computes to a documented tolerance. That makes it possible to
measure each sampler's error and order of accuracy, offline, on a CPU, in seconds.
"""

from __future__ import annotations

import functools
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from skimage import data as skdata
from skimage.color import gray2rgb, rgba2rgb
from skimage.transform import resize

from convergence.core.atomic import atomic_write_bytes
from convergence.core.errors import ConvergenceError
from convergence.models import fixed_order, mixture_rows
from convergence.models.base import Conditioning, Model
from convergence.models.vp import scaled_linear_alphas_cumprod, sigmas_from_alphas_cumprod

#: topic -> pictures (scikit-image names); every picture is one mixture component.
#: (Stand-ins: "anime" gets the two flat-colour drawings scikit-image ships.)
TOPIC_PICTURES: dict[str, tuple[str, ...]] = {
    "anime": ("logo", "colorwheel"),
    "nature": ("rocket", "hubble_deep_field", "moon"),
    "food": ("coffee",),
    "animals": ("chelsea", "horse"),
    "people": ("astronaut", "camera"),
}
#: every component, in the model's order
PICTURES = tuple(p for t in TOPIC_PICTURES.values() for p in t)
#: a prompt's model holds only its topic's pictures; the unconditional model holds all
OFF_TOPIC_LOG_WEIGHT = -math.inf

MIN_SIZE, MAX_SIZE = 32, 256


@dataclass(frozen=True)
class MixtureSpec:
    """Knobs of the mixture; all of them go into the cell hash through ``fingerprint``."""

    rank: int = 24
    isotropic_std: float = 0.02
    n_crops: int = 64
    jitter: float = 0.03
    seed: int = 0


def _picture(name: str) -> np.ndarray:
    img = getattr(skdata, name)()
    if img.dtype == bool:
        img = img.astype(np.float64)
    img = np.asarray(img, dtype=np.float64)
    if img.max() > 1.0:
        img = img / 255.0
    if img.ndim == 2:
        img = gray2rgb(img)
    elif img.shape[-1] == 4:
        img = rgba2rgb(img)
    return img


def _crop(img: np.ndarray, aspect: float, scale: float, fx: float, fy: float) -> np.ndarray:
    """A crop of the given aspect (w/h), relative scale and position fractions."""
    h, w = img.shape[:2]
    ch = min(h, w / aspect) * scale
    cw = ch * aspect
    y0 = int(round((h - ch) * fy))
    x0 = int(round((w - cw) * fx))
    return img[y0:y0 + int(ch), x0:x0 + int(cw)]


@functools.lru_cache(maxsize=8)
def _component(name: str, width: int, height: int, spec: MixtureSpec):
    """(mean, U, lam) of one picture's component, flattened CHW in [-1, 1]."""
    img = _picture(name)
    aspect = width / height
    # downscale once so the many jittered crops are cheap to resize
    factor = max(1.0, min(img.shape[0] / (2 * height), img.shape[1] / (2 * width)))
    if factor > 1.0:
        img = resize(img, (int(img.shape[0] / factor), int(img.shape[1] / factor)),
                     anti_aliasing=True)

    def to_vec(a: np.ndarray) -> np.ndarray:
        a = resize(a, (height, width), anti_aliasing=True)
        return (a.transpose(2, 0, 1).reshape(-1) * 2.0 - 1.0)

    img = _crop(img, aspect, 1.0, 0.5, 0.5)  # the picture's centre at the target aspect
    mean = to_vec(img)
    rng = np.random.default_rng([spec.seed, sum(map(ord, name))])
    crops = []
    for _ in range(spec.n_crops):
        scale = 1.0 - spec.jitter * rng.random()
        gain = 1.0 + 0.5 * spec.jitter * rng.standard_normal()
        crops.append(to_vec(_crop(img, aspect, scale, rng.random(), rng.random())) * gain)
    dev = np.stack(crops) - mean
    _, s, vt = np.linalg.svd(dev, full_matrices=False)
    r = min(spec.rank, len(s))
    lam = s[:r] ** 2 / spec.n_crops
    return mean, vt[:r].T.copy(), lam


def _fingerprint(spec: MixtureSpec) -> dict:
    return {"name": AnalyticModel.name, "pictures": list(PICTURES), **spec.__dict__}


def _fingerprint_text(spec: MixtureSpec) -> str:
    return json.dumps(_fingerprint(spec), sort_keys=True)


def _record_path(folder: Path, width: int, height: int) -> Path:
    """Where a study keeps the analytic model of its size (AnalyticModel.record)."""
    return Path(folder) / "model" / f"{AnalyticModel.name}-{width}x{height}.npz"


def _read_record(path: Path, *names: str) -> dict[str, np.ndarray] | None:
    """These arrays of a model record (an npz reads only the members asked for); None for
    a missing or damaged file."""
    try:
        with np.load(path) as f:
            return {n: f[n] for n in names}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


class AnalyticModel(Model):
    """Gaussian-mixture diffusion model with an exact denoiser (float64 on the CPU)."""

    name = "analytic"
    #: pixels: the PNG clips the float sample to [-1, 1] (:meth:`decode`)
    display_range = (-1.0, 1.0)

    def __init__(self, width: int = 64, height: int = 64, spec: MixtureSpec | None = None,
                 components: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        """``components``: (means, bases, variances) as :meth:`record` wrote them, instead
        of building them from the pictures (seconds: resizing crops and their SVDs)."""
        self.spec = spec or MixtureSpec()
        self.validate_size(width, height)
        self.width, self.height = width, height
        self.dtype = torch.float64
        self.device = torch.device("cpu")
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        sig = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.sigma_min, self.sigma_max = float(sig[0]), float(sig[-1])
        self.pictures = list(PICTURES)
        self.topics = dict(TOPIC_PICTURES)
        if components is None:
            comps = [_component(p, width, height, self.spec) for p in self.pictures]
            components = tuple(np.stack([c[i] for c in comps]) for i in range(3))
        self.set_components(*components, self.spec.isotropic_std ** 2)

    def record(self, folder: Path) -> None:
        """The mixture's components, bit for bit, so the analysis uses the model the cells
        were made with instead of building it again (2 s at 64x64; 25 MB there, half the
        size of the default study's 960 float samples)."""
        path = _record_path(folder, self.width, self.height)
        have = _read_record(path, "fingerprint")
        if have is not None and str(have["fingerprint"]) == _fingerprint_text(self.spec):
            return
        buf = io.BytesIO()
        np.savez(buf, mu=self.mu.numpy(), U=self.U.numpy(), lam=self.lam.numpy(),
                 fingerprint=np.array(_fingerprint_text(self.spec)))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def recorded(cls, folder: Path, width: int, height: int,
                 spec: MixtureSpec | None = None) -> AnalyticModel | None:
        """The model :meth:`record` wrote into ``folder`` for this size and spec; None when
        there is none (a study run before models were recorded) or it is another model."""
        spec = spec or MixtureSpec()
        rec = _read_record(_record_path(folder, width, height), "fingerprint", "mu", "U", "lam")
        if rec is None or str(rec["fingerprint"]) != _fingerprint_text(spec):
            return None  # none, another model or damaged: the caller builds the model
        mu, U, lam = rec["mu"], rec["U"], rec["lam"]
        if mu.shape != (len(PICTURES), 3 * width * height) or U.shape[:2] != mu.shape:
            return None
        return cls(width, height, spec, (mu, U, lam))

    def set_components(self, mu: np.ndarray, U: np.ndarray, lam: np.ndarray, s2: float) -> None:
        """Install mixture components: means (K, d), orthonormal bases (K, d, r), low-rank
        variances (K, r) and the isotropic variance s2 (tests use small synthetic ones)."""
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.U = torch.as_tensor(U, dtype=torch.float64)
        self.lam = torch.as_tensor(lam, dtype=torch.float64)
        self.s2 = float(s2)
        K, d, r = self.U.shape
        self.d, self.r = d, r
        # every projection of x in one product, and the output in another: the denoiser
        # is two passes over x (its cost is these two products), both in a fixed order
        self.basis = torch.cat([self.U.permute(1, 0, 2).reshape(d, K * r), self.mu.T],
                               dim=1).contiguous()                            # (d, K*r + K)
        self._project_onto = fixed_order.PackedColumns(self.basis.numpy())
        self._expand_from = fixed_order.PackedColumns(self.basis.T.contiguous().numpy())
        self.muU = torch.stack([fixed_order.matmul(self.mu[k:k + 1], fixed_order.PackedColumns(
            self.U[k].numpy()))[0] for k in range(K)])                       # (K, r)
        self.mu_sq = fixed_order.sum_squares(self.mu)                         # (K,)
        self._reduced: tuple[AnalyticModel, torch.Tensor] | None = None

    def reduced(self) -> tuple[AnalyticModel, torch.Tensor]:
        """The same mixture in the span of its means and bases, and that span's basis Q.

        Off the span, every component's covariance is the same s2 * I, so the orthogonal
        part of x adds the same term to every component's log-likelihood (responsibilities
        ignore it) and is denoised by the scalar s2 / (s2 + sigma^2): the probability-flow
        ODE splits into an m-dimensional ODE (m = K * (r + 1), a few hundred) and a
        closed-form scaling. That makes exact solutions ~50x cheaper at 64x64."""
        if self._reduced is None:
            basis = torch.cat([self.mu.T, self.U.permute(1, 0, 2).reshape(self.d, -1)], dim=1)
            Q = torch.linalg.qr(basis, mode="reduced").Q                      # (d, m)
            small = AnalyticModel.__new__(AnalyticModel)
            small.__dict__.update(self.__dict__)
            small.set_components((self.mu @ Q).numpy(), torch.einsum("dm,kdr->kmr", Q, self.U).numpy(),
                                 self.lam.numpy(), self.s2)
            self._reduced = (small, Q)
        return self._reduced

    # -- Model interface -------------------------------------------------------------
    def fingerprint(self) -> dict:
        return _fingerprint(self.spec)

    def validate_size(self, width: int, height: int) -> None:
        for label, v in (("width", width), ("height", height)):
            if not isinstance(v, int) or v % 8 or not MIN_SIZE <= v <= MAX_SIZE:
                raise ConvergenceError(
                    f"the analytic model cannot make {label}={v!r}: use a multiple of 8 "
                    f"between {MIN_SIZE} and {MAX_SIZE}")

    def latent_shape(self, width: int, height: int) -> tuple[int, ...]:
        if (width, height) != (self.width, self.height):
            raise ConvergenceError(
                f"this analytic model was built for {self.width}x{self.height}, not {width}x{height}")
        return (3, height, width)

    def topic_log_weights(self, topic: str | None) -> torch.Tensor:
        """Mixture log-weights for a topic (uniform over all pictures for ``None``)."""
        if topic is None:
            return torch.zeros(len(self.pictures), dtype=torch.float64)
        if topic not in self.topics:
            raise ConvergenceError(
                f"unknown topic {topic!r} for the analytic model; known: {', '.join(self.topics)}")
        on = set(self.topics[topic])
        return torch.tensor([0.0 if p in on else OFF_TOPIC_LOG_WEIGHT for p in self.pictures],
                            dtype=torch.float64)

    def encode_prompts(self, prompts: list[str], topics: list[str]) -> Conditioning:
        cond = torch.stack([self.topic_log_weights(t) for t in topics])
        uncond = torch.stack([self.topic_log_weights(None) for _ in topics])
        return Conditioning(cond=cond, uncond=uncond)

    def _projections(self, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """x flattened, its projections x @ basis (B, K*r + K) and |x|^2, in a fixed order."""
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        both = fixed_order.matmul(xf, self._project_onto).contiguous().numpy()
        return xf, both, fixed_order.sum_squares(xf).numpy()

    def _log_likelihoods(self, both: np.ndarray, xsq: np.ndarray, sigma: torch.Tensor,
                         with_logdet: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(Mahalanobis forms, log-likelihoods up to a constant), each (B, K)."""
        return mixture_rows.log_likelihoods(
            both, xsq, _rows(sigma), self.muU.numpy(), self.mu_sq.numpy(), self.lam.numpy(),
            self.s2, self.d, with_logdet)

    def _output(self, xf: torch.Tensor, both: np.ndarray, resp: np.ndarray,
                sigma: torch.Tensor) -> torch.Tensor:
        """gain_iso * x + (1 - gain_iso) * sum_k resp_k mu_k + sum_k U_k coef_k (flat)."""
        coef, gain_iso = mixture_rows.output_coefficients(
            both, resp, _rows(sigma), self.muU.numpy(), self.lam.numpy(), self.s2)
        start = torch.mul(torch.from_numpy(gain_iso)[:, None], xf)
        return fixed_order.matmul(torch.from_numpy(coef), self._expand_from, out=start)

    def row_bytes(self, width: int, height: int) -> int:
        """About 16 float64 vectors of the image's size per row (the denoiser's temporaries)."""
        return 16 * 8 * 3 * width * height

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Row-independent to the bit by construction: every row's arithmetic runs in a
        fixed order of its own (``fixed_order``, ``mixture_rows``), whatever shares the call."""
        return self.guided_denoise(x, sigma, Conditioning(cond=cond, uncond=None), 1.0).to(x.dtype)

    def guided_denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                       cfg_scale: float) -> torch.Tensor:
        """D_u + s (D_c - D_u) from one projection of x (the exact solver's denoiser).

        The output is linear in the responsibilities, so guidance mixes them, not two
        outputs: half the arithmetic of a cond row and an uncond row. Equal to
        GuidedDenoiser(model) up to float64 rounding (tests/unit/test_analytic_model.py)."""
        xf, both, xsq = self._projections(x)
        _, loglik = self._log_likelihoods(both, xsq, sigma)
        uncond = cond.uncond if cfg_scale != 1.0 else cond.cond
        resp = mixture_rows.responsibilities(loglik, _rows(cond.cond), _rows(uncond),
                                             float(cfg_scale))
        return self._output(xf, both, resp, sigma).reshape(x.shape)

    def decode(self, x: torch.Tensor) -> np.ndarray:
        img = ((x.detach().to(torch.float64).cpu().clamp(-1, 1) + 1) * 127.5).round()
        return img.to(torch.uint8).permute(0, 2, 3, 1).numpy()

    # -- ground truth for the analysis --------------------------------------------------
    def responsibilities(self, x: torch.Tensor, sigma: float, log_w: torch.Tensor) -> torch.Tensor:
        """Posterior probability of each picture given x_sigma (rows sum to 1)."""
        _, both, xsq = self._projections(x)
        s = torch.full((x.shape[0],), float(sigma), dtype=torch.float64)
        _, loglik = self._log_likelihoods(both, xsq, s)
        w = _rows(log_w.expand(x.shape[0], -1) if log_w.ndim == 1 else log_w)
        return torch.from_numpy(mixture_rows.responsibilities(loglik, w, w, 1.0))

    def mahalanobis_per_dim(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared Mahalanobis distance / d of each image to its nearest component,
        and that component's index. A clean sample of the model scores about 1; residual
        noise or a blend of two pictures scores far higher (coherence ground truth)."""
        _, both, xsq = self._projections(x)
        quad, _ = self._log_likelihoods(both, xsq, torch.zeros(x.shape[0], dtype=torch.float64),
                                        with_logdet=False)
        best, idx = (torch.from_numpy(quad) / self.d).min(1)
        return best, idx


def _rows(t: torch.Tensor) -> np.ndarray:
    """A float64, C-contiguous numpy view (or copy) of a per-row tensor."""
    return np.ascontiguousarray(t.detach().to(torch.float64).cpu().numpy())


def _single_gaussian_tail(model: AnalyticModel, x: torch.Tensor, k: torch.Tensor,
                          sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Exact PF-ODE flow of one Gaussian component from sigma_from to sigma_to.

    Per eigen-direction with variance v: x - mu scales by sqrt((v + s_to^2)/(v + s_from^2)).
    Valid once one component holds all the posterior mass (checked by the caller)."""
    B = x.shape[0]
    xf = x.reshape(B, -1)
    mu, U, lam = model.mu[k], model.U[k], model.lam[k]                     # (B,d),(B,d,r),(B,r)
    res = xf - mu
    proj = torch.einsum("bd,bdr->br", res, U)
    v_low = lam + model.s2
    f_iso = math.sqrt((model.s2 + sigma_to**2) / (model.s2 + sigma_from**2))
    f_low = torch.sqrt((v_low + sigma_to**2) / (v_low + sigma_from**2))
    out = mu + f_iso * res + torch.einsum("br,bdr->bd", (f_low - f_iso) * proj, U)
    return out.reshape(x.shape)


#: tolerance of the exact solver (relative and absolute, per component of the state)
EXACT_RTOL = 1e-10
EXACT_ATOL = 1e-10
#: the tail to sigma = 0 is closed-form from here at the latest (or from where the posterior
#: has collapsed onto one picture, usually the schedule's sigma_min)
TAIL_SIGMA = 1e-4


def exact_solution(model: AnalyticModel, x_start: torch.Tensor, sigma_start: float,
                   sigma_end: float, conditioning: Conditioning, cfg_scale: float = 1.0,
                   denoise_at_end: bool = False, rtol: float = EXACT_RTOL,
                   atol: float = EXACT_ATOL, reduce: bool = True) -> torch.Tensor:
    """The true probability-flow ODE solution from (x_start, sigma_start) to sigma_end.

    Integrates dx/dt = x - D(x, e^t) in t = log(sigma) with DOP853 at the given tolerance,
    in float64. ``sigma_end = 0`` continues to the data (closed-form tail below
    TAIL_SIGMA); ``denoise_at_end`` returns D(x(sigma_end)) instead, which is where
    samplers whose last step is a denoise (euler, heun, dpm_2, dpmpp_2m) end up.
    ``reduce`` solves in the mixture's span (:meth:`AnalyticModel.reduced`), which is
    exact; ``reduce=False`` integrates all d dimensions (the tests compare the two).
    """
    shape = x_start.shape
    B = shape[0]
    if reduce:
        small, Q = model.reduced()
        xf = x_start.to(torch.float64).reshape(B, -1)
        y = xf @ Q
        ortho = xf - y @ Q.T
        y = exact_solution(small, y, sigma_start, sigma_end, conditioning, cfg_scale,
                           denoise_at_end, rtol, atol, reduce=False)
        # off the span: the ODE scales x by sqrt((s2 + sigma^2) / (s2 + sigma_start^2)),
        # and the denoiser multiplies it by s2 / (s2 + sigma^2)
        ortho = ortho * math.sqrt((model.s2 + sigma_end**2) / (model.s2 + sigma_start**2))
        if denoise_at_end:
            ortho = ortho * model.s2 / (model.s2 + sigma_end**2)
        return (y @ Q.T + ortho).reshape(shape)

    x = x_start.to(torch.float64)
    if sigma_end < TAIL_SIGMA:
        # already one picture's Gaussian (usual from the schedules' sigma_min on): the
        # flow to sigma_end is closed-form, no integration (checked at both ends)
        tail = _collapsed_tail(model, x, sigma_start, sigma_end, conditioning, cfg_scale)
        if tail is not None:
            x, sigma_start = tail, sigma_end
    stop = max(sigma_end, TAIL_SIGMA)
    if sigma_start > stop:
        x = _solve(model, x, sigma_start, stop, conditioning, cfg_scale, rtol, atol)
    if sigma_end < min(stop, sigma_start):
        tail = _collapsed_tail(model, x, stop, sigma_end, conditioning, cfg_scale)
        if tail is None:
            raise RuntimeError("posterior has not collapsed at TAIL_SIGMA; cannot use the "
                               "closed-form tail")
        x = tail
    if denoise_at_end:
        s = torch.full((B,), sigma_end, dtype=torch.float64)
        x = model.guided_denoise(x, s, conditioning, cfg_scale)
    return x


#: a posterior counts as collapsed onto one picture when the others' responsibilities sum
#: below this: the closed-form tail then neglects terms of relative size <= 1e-13 x the
#: distance between pictures (O(10) here), far below EXACT_RTOL
COLLAPSED = 1e-13


def _collapsed_tail(model: AnalyticModel, x: torch.Tensor, sigma_from: float, sigma_to: float,
                    conditioning: Conditioning, cfg_scale: float) -> torch.Tensor | None:
    """x carried from sigma_from to sigma_to in closed form, if the posterior of every row
    (conditional and, with CFG, unconditional) sits on one and the same picture at both
    ends; None otherwise."""
    weights = [conditioning.cond] + ([conditioning.uncond] if cfg_scale != 1.0 else [])

    def picture(x: torch.Tensor, sigma: float) -> torch.Tensor | None:
        resp = [model.responsibilities(x, max(sigma, TAIL_SIGMA), w) for w in weights]
        k = resp[0].argmax(1)
        if any((r.max(1).values < 1 - COLLAPSED).any() or (r.argmax(1) != k).any()
               for r in resp):
            return None
        return k

    k = picture(x, sigma_from)
    if k is None:
        return None
    out = _single_gaussian_tail(model, x, k, sigma_from, sigma_to)
    end = picture(out, sigma_to)
    return out if end is not None and bool((end == k).all()) else None


def _solve(model: AnalyticModel, x: torch.Tensor, sigma_from: float, sigma_to: float,
           conditioning: Conditioning, cfg_scale: float, rtol: float,
           atol: float) -> torch.Tensor:
    """x carried from sigma_from to sigma_to by DOP853 in t = log(sigma), all rows as one
    state. scipy bounds the RMS error over the whole state, so the tolerances are divided
    by sqrt(rows): each row's own RMS error then meets ``rtol``/``atol``."""
    shape = x.shape
    shrink = math.sqrt(shape[0])

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).reshape(shape)
        s = torch.full((shape[0],), math.exp(t), dtype=torch.float64)
        return (xt - model.guided_denoise(xt, s, conditioning, cfg_scale)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(sigma_from), math.log(sigma_to)), x.reshape(-1).numpy(),
                    method="DOP853", rtol=rtol / shrink, atol=atol / shrink)
    if not sol.success:
        raise RuntimeError(f"exact ODE solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
