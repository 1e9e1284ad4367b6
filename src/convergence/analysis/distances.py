"""Distances: one row per cell x metric x reference, plus each cell's residual-noise
estimate (metric ``noise``, reference ``self``), written to distances.parquet.

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


def in_chunks(fn, x: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``fn(x[i], x[j])`` (one value per pair) over chunks of pairs of at most
    :data:`CHUNK_BYTES`; the analytic model's 64x64 study needs one or two chunks."""
    size = max(1, CHUNK_BYTES // (8 * max(1, x[0].size)))
    if len(i) == 0:
        return np.zeros(0)
    return np.concatenate([fn(x[i[k:k + size]], x[j[k:k + size]])
                           for k in range(0, len(i), size)])


def noise_estimate(x: np.ndarray) -> np.ndarray:
    """Residual-noise std per image (Immerkaer 1996: |Laplacian-difference| mean), batched,
    divided by the image's own std, so it does not change with brightness or contrast.
    Needs no reference: it is what makes coherence independent of the final image.

    Immerkaer's 3x3 mask [[1, -2, 1], [-2, 4, -2], [1, -2, 1]] is the outer product of
    [1, -2, 1] with itself: two second differences of shifted slices. On the default study's
    960 float64 pictures that takes 0.22 s where conv2d took 1.19 s (equal within 5e-16)."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float64)).to(M.metric_device())
    b = t.shape[0]
    rows = t[..., :-2, :] - 2 * t[..., 1:-1, :] + t[..., 2:, :]
    r = (rows[..., :-2] - 2 * rows[..., 1:-1] + rows[..., 2:]).abs().reshape(b, -1).mean(1)
    scale = t.reshape(b, -1).std(1, correction=0).clamp_min(1e-12)
    return M.host(r * math.sqrt(math.pi / 2) / 6 / scale)


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
    names, notes = M.available(list(dict.fromkeys([a.metric, *a.metrics])))
    shown, more = load_pictures(store, cells, samples)
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
            if spec.space == "image" and (ref not in a.image_references or ref == "next"):
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
    emit(every, "self", "noise", in_chunks(lambda u, _: noise_estimate(u), shown, every, every),
         [""] * len(cells))
    return pd.concat(out, ignore_index=True), notes


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
            elif name in a.image_references:
                c = cells.iloc[at]
                img = unit_images(displayed(ref, c), *picture_range(c))
                emit(at, name, n, M.compute(n, images[at], img), [""] * len(at))
