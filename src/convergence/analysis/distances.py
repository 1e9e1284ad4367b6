"""Distances: one row per cell x metric x reference, plus each cell's reference-free
measures (reference ``self``: ``noise``, its residual noise in 8-bit levels, and
``clipped``, the fraction of its values at the display range's ends), written to
distances.parquet.

Model-space metrics are measured on what is displayed: each cell's picture as floats
(:mod:`convergence.analysis.pictures`: the analytic model's sample clipped to its display
range, a latent model's decoded float image), so the key points and verdicts agree with
the pictures and mean the same on both model kinds; image metrics see the same picture
in [0, 1]. The rate metrics (``analysis.rate_metrics``) stay on the unclipped floats of
the sample (latents for latent models): orders of accuracy need a smooth map, and
clipping and decoding are not one."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from convergence.analysis import metrics as M
from convergence.analysis import tables as T
from convergence.analysis.pictures import displayed, load_pictures, picture_range, unit_images
from convergence.analysis.references import EXACT_LIMITS, exact_limits, pairs
from convergence.config.schema import AnalysisConfig
from convergence.core.errors import ConvergenceError
from convergence.core.store import Store
from convergence.models.device import select_device

META = [c for c, _ in T.SCHEMAS["distances"][:11]]
#: bytes of float64 pictures one metric call sees: a 512x512 decoded picture is 6 MB in
#: float64, so scoring every pair of a real-model study at once would take gigabytes
CHUNK_BYTES = 256 * 2**20


def chunk_rows(x: np.ndarray) -> int:
    """Pictures of ``x`` per chunk: at most :data:`CHUNK_BYTES` of them in float64."""
    return max(1, CHUNK_BYTES // (8 * max(1, x[0].size)))


def in_chunks(fn, x: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``fn(x[i], x[j])`` (one value per pair) over chunks of pairs of at most
    :data:`CHUNK_BYTES`; the analytic model's 64x64 study needs one or two chunks."""
    size = chunk_rows(x)
    if len(i) == 0:
        return np.zeros(0)
    return np.concatenate([fn(x[i[k:k + size]], x[j[k:k + size]])
                           for k in range(0, len(i), size)])


def noise_estimate(x: np.ndarray) -> np.ndarray:
    """Residual-noise std per image (Immerkaer 1996: |Laplacian-difference| mean), batched,
    in the picture's own units. Needs no reference: it is what makes coherence independent
    of the final image.

    Immerkaer's 3x3 mask [[1, -2, 1], [-2, 4, -2], [1, -2, 1]] is the outer product of
    [1, -2, 1] with itself: two second differences of shifted slices. On the default study's
    960 float64 pictures that takes 0.22 s where conv2d took 1.19 s (equal within 5e-16)."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float64)).to(M.metric_device())
    b = t.shape[0]
    rows = t[..., :-2, :] - 2 * t[..., 1:-1, :] + t[..., 2:, :]
    r = (rows[..., :-2] - 2 * rows[..., 1:-1] + rows[..., 2:]).abs().reshape(b, -1).mean(1)
    return M.host(r * math.sqrt(math.pi / 2) / 6)


def noise_levels(shown: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Residual noise of each picture (display units, (B, C, H, W)) in 8-bit levels of its
    display range [lo, hi]: an absolute scale, so a clean low-contrast picture (a misty
    valley) does not read as noisy, as it did relative to its own std."""
    return noise_estimate(shown) * 255 / (np.asarray(hi, np.float64) - np.asarray(lo, np.float64))


def clipped_fraction(shown: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fraction of each picture's values at an end of its display range: a sample pushed far
    off the data (a diverging or over-guided step) saturates, a clean one rarely does."""
    shape = (-1,) + (1,) * (np.ndim(shown) - 1)
    at_end = ((shown <= np.asarray(lo, shown.dtype).reshape(shape))
              | (shown >= np.asarray(hi, shown.dtype).reshape(shape)))
    return at_end.reshape(len(shown), -1).mean(1)


def keypoint_metrics(a: AnalysisConfig) -> list[str]:
    """The metrics the key points are measured with (always computed)."""
    return [a.indicative_metric, a.indicative_fallback_metric, a.converged_metric]


def analysis_device(setting: str, cells: pd.DataFrame) -> tuple[torch.device, list[str]]:
    """Where the torch-based metrics run, and a note when ``auto`` cannot follow the study.

    ``auto``: the device the study's cells were generated on (recorded per cell), so a GPU
    study is scored in batches on the GPU; the CPU when that device is not present here
    (a study copied from a GPU machine). A named device must exist."""
    key = str(setting).strip().lower()
    if key != "auto":
        return select_device(key, "analysis.device"), []
    ran = str(cells.device.mode().iloc[0]) if "device" in cells and len(cells) else "cpu"
    try:
        return select_device(ran), []
    except ConvergenceError:
        return torch.device("cpu"), [f"analysis.device=auto: the cells ran on {ran}, which is "
                                     "not available here; the metrics run on the CPU"]


def compute_distances(a: AnalysisConfig, store: Store, cells: pd.DataFrame, samples: np.ndarray,
                      model=None, progress: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The distances table and one-line notes on what was skipped. ``model`` is the
    analytic model when exact references are wanted (None elsewhere). The torch-based
    metrics run on ``analysis.device`` (:func:`analysis_device`), in chunks."""
    device, notes = analysis_device(a.device, cells)
    with M.on_device(device):
        dist, more = _distances(a, store, cells, samples, model, progress)
    return dist, notes + more


def _distances(a: AnalysisConfig, store: Store, cells: pd.DataFrame, samples: np.ndarray,
               model, progress: bool) -> tuple[pd.DataFrame, list[str]]:
    shown, notes = load_pictures(store, cells, samples)
    names, more = M.usable_at(list(dict.fromkeys([a.metric, *keypoint_metrics(a), *a.metrics])),
                              min(shown.shape[-2:]) if len(cells) else 0)
    notes += more
    floats = set(a.rate_metrics)
    images = unit_images(shown, *picture_range(cells)) if any(
        M.get_metric(n).space == "image" for n in names) else None
    refs = list(dict.fromkeys(["next", a.reference, *a.references]))
    out: list[pd.DataFrame] = []
    meta = cells[META]

    def emit(rows: np.ndarray, ref_name: str, metric: str, values: np.ndarray,
             ref_hash: list[str]) -> None:
        part = meta.iloc[rows].copy()
        part["reference"] = ref_name
        part["ref_hash"] = ref_hash
        part["metric"] = metric
        part["value"] = values
        out.append(part)

    for ref in refs:
        if ref == "exact" or ref in EXACT_LIMITS:
            continue
        pp = pairs(cells, ref)
        if not pp:
            notes.append(f"reference {ref!r}: no matching cells in this study")
            continue
        i, j = np.array(pp).T
        for n in names:
            spec = M.get_metric(n)
            if spec.space == "image" and not _image_pair(a, n, ref):
                continue
            x = (samples if n in floats else shown) if spec.space == "sample" else images
            emit(i, ref, n, in_chunks(lambda u, v, n=n: M.compute(n, u, v), x, i, j),
                 list(cells.hash.iloc[j]))
    if "exact" in refs:
        if model is None:
            notes.append("exact references: this model has no exact solution; skipped")
        else:
            _exact(a, store, cells, samples, images, model, names, notes, emit, progress)
    every = np.arange(len(cells))
    lo, hi = picture_range(cells)
    size = chunk_rows(shown)
    for name, fn in (("noise", noise_levels), ("clipped", clipped_fraction)):
        # in chunks, with each picture's own range: 512x512 float64 pictures are 6 MB each
        emit(every, "self", name, np.concatenate(
            [fn(shown[k:k + size], lo[k:k + size], hi[k:k + size])
             for k in range(0, len(cells), size)]), [""] * len(cells))
    return pd.concat(out, ignore_index=True), notes


def _image_pair(a: AnalysisConfig, metric: str, reference: str) -> bool:
    """Whether an image metric is computed against ``reference``: the image references
    (FLIP costs ~30 ms a pair on a CPU), the indicative metrics against the key points'
    reference too, and the converged metric (a cheap pixel count) against every reference:
    the next step count (the key points' "change"), the exact limits (its ground truth) and
    cross-sampler references (the claims')."""
    if metric == a.converged_metric:  # cheap: against every reference (claims use heun@max)
        return True
    if reference == "next":
        return False
    if metric in keypoint_metrics(a):
        return reference in (a.reference, *a.image_references)
    return reference in a.image_references


def _exact(a, store, cells, samples, images, model, names, notes, emit, progress) -> None:
    # diffusers schedulers pick their own start (timestep and noise scale): the exact ODE
    # from the cell's schedule would describe another trajectory
    own = (cells.family != "diffusers").to_numpy()
    if not own.all():
        notes.append("exact references: skipped for diffusers-scheduler samplers "
                     "(they choose their own start)")
    rows = np.flatnonzero(own)
    lim = exact_limits(model, store, cells.iloc[rows].to_dict("records"), a.exact_rtol,
                       progress=progress)
    for name in EXACT_LIMITS:
        k = np.array([n for n, d in enumerate(lim) if name in d], dtype=int)
        if len(k) == 0:
            continue
        at = rows[k]
        ref = np.stack([lim[n][name] for n in k]).astype(np.float64)
        for n in names:
            if M.get_metric(n).space == "sample" and n in a.rate_metrics:
                emit(at, name, n, M.compute(n, samples[at], ref), [""] * len(at))
            elif M.get_metric(n).space == "sample":
                c = cells.iloc[at]
                emit(at, name, n, M.compute(n, displayed(samples[at], c), displayed(ref, c)),
                     [""] * len(at))
            elif _image_pair(a, n, name):
                c = cells.iloc[at]
                img = unit_images(displayed(ref, c), *picture_range(c))
                emit(at, name, n, M.compute(n, images[at], img), [""] * len(at))
