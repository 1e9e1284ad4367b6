"""Each cell's picture as floats: what key points and image metrics are measured on.

The picture is what the PNG shows, before 8-bit rounding, in the model's display range
(recorded per cell as display_lo/display_hi):

- a latent model's cell: the VAE-decoded float image the runner stored (``decoded/``), so
  the analysis never rebuilds the model and differences below one 8-bit level stay visible;
- a model whose sample is the picture (the analytic model): the sample clipped to the range;
- a cell with neither (a latent cell stored before decoded images were recorded, or a
  model that declares no display range): its PNG divided by 255, with one note saying how
  many (a run of the study into a new results_dir records the floats).

Key points use the picture in display units, (B, C, H, W) float64; image metrics the same
picture as (B, H, W, 3) float32 in [0, 1] (:func:`unit_images`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["displayed", "load_pictures", "picture_range", "unit_images"]


def displayed(x: np.ndarray, cells: pd.DataFrame) -> np.ndarray:
    """Each cell's float sample clipped to its recorded display range (what its image
    shows, for a model whose sample is the picture)."""
    shape = (-1,) + (1,) * (np.ndim(x) - 1)
    return np.clip(x, cells.display_lo.to_numpy(np.float64).reshape(shape),
                   cells.display_hi.to_numpy(np.float64).reshape(shape))


def picture_range(cells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per cell of the picture's values: the display range, or [0, 1] for a
    cell measured on its PNG (no finite range recorded)."""
    lo = cells.display_lo.to_numpy(np.float64)
    hi = cells.display_hi.to_numpy(np.float64)
    finite = np.isfinite(lo) & np.isfinite(hi)
    return np.where(finite, lo, 0.0), np.where(finite, hi, 1.0)


def load_pictures(store, cells: pd.DataFrame, samples: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Every cell's picture in display units, (B, C, H, W) clipped to the display range
    (float64 where it is the sample, float32 as decoded images are stored: 3 MB, not 6, a
    512x512 picture in memory), and one-line notes (latent cells without a decoded image)."""
    decoded = (cells["decoded"].fillna("").astype(str).str.len().to_numpy() > 0
               if "decoded" in cells else np.zeros(len(cells), dtype=bool))
    lo, hi = picture_range(cells)
    own = ~decoded & np.isfinite(cells.display_lo.to_numpy(np.float64))
    if own.all():  # the sample is the picture (no file to read)
        return displayed(samples, cells), []
    out = np.stack([displayed(samples[k:k + 1], cells.iloc[k:k + 1])[0] if own[k]
                    else (store.load_decoded(h) if decoded[k]
                          else store.load_image(h) / np.float32(255)).transpose(2, 0, 1)
                    for k, h in enumerate(cells.hash)])
    shape = (-1, 1, 1, 1)
    out = np.clip(out, lo.astype(out.dtype).reshape(shape), hi.astype(out.dtype).reshape(shape))
    png = int((~decoded & ~own).sum())
    notes = [] if not png else [
        f"{png} of {len(cells)} cells have no float picture (latent cells stored before decoded "
        "float images were recorded): their key points and image metrics use the 8-bit PNG, "
        "blind below one level; run the study into a new results_dir to record the floats"]
    return out, notes


def unit_images(shown: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Pictures in display units (B, C, H, W) -> (B, H, W, 3) float32 in [0, 1]: what image
    metrics see (the PNG is this times 255, rounded)."""
    shape = (-1, 1, 1, 1)
    lo, span = lo.astype(np.float32).reshape(shape), (hi - lo).astype(np.float32).reshape(shape)
    return ((shown.astype(np.float32, copy=False) - lo) / span).transpose(0, 2, 3, 1)
