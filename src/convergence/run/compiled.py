"""Optional compiled model calls (``model.compile=true``; off by default).

A compiled model (``torch.compile``; on CUDA with ``mode="reduce-overhead"``, i.e. CUDA
graphs) wants few, static shapes. Gathered calls have any number of rows up to the row
budget, so each call is padded to a row *bucket* (1, 2, 4, ... up to the budget) with
copies of its first row, and the padding is cut off the output. On a row-independent
model the padding changes no row (the analytic model: bit for bit, tests/integration/test_gather.py);
on a real model within the tolerance of docs/batching.md. Not in the cell hash: like the
device, compiling changes rounding, not the maths. Off by default until a GPU
measurement shows a gain (`convergence bench` with and without it).
"""

from __future__ import annotations

from typing import Any

import torch

from convergence.models.base import DenoiseCall, cat_rows, take_rows


def row_buckets(row_budget: int) -> list[int]:
    """Powers of two below the budget, then the budget itself."""
    out = [1]
    while out[-1] * 2 < row_budget:
        out.append(out[-1] * 2)
    return sorted({*out, int(row_budget)})


def pad_rows(value: Any, rows: int) -> Any:
    """``value`` (tensor or dict of tensors) with ``rows`` copies of its first row appended."""
    if rows == 0:
        return value
    return cat_rows([value, *[take_rows(value, 0, 1)] * rows])


class BucketedCall:
    """``denoise`` called on row counts from :func:`row_buckets` only, optionally compiled."""

    def __init__(self, denoise: DenoiseCall, row_budget: int, compile: bool = False,
                 device_type: str = "cpu", backend: str = "inductor"):
        self.buckets = row_buckets(row_budget)
        self.compiled = compile
        if compile:
            mode = "reduce-overhead" if device_type == "cuda" and backend == "inductor" else None
            denoise = torch.compile(denoise, dynamic=False, mode=mode, backend=backend)
        self.denoise = denoise
        self.shapes: set[int] = set()

    def bucket(self, rows: int) -> int:
        return next((b for b in self.buckets if b >= rows), rows)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        n = x.shape[0]
        extra = self.bucket(n) - n
        self.shapes.add(n + extra)
        out = self.denoise(pad_rows(x, extra), pad_rows(sigma, extra), pad_rows(cond, extra))
        # CUDA graphs reuse their output buffer on the next replay: keep a copy
        return out[:n].clone() if self.compiled else out[:n]


def model_call(model, row_budget: int, compile: bool) -> DenoiseCall:
    """The call the runner gathers into: ``model.denoise``, or bucketed and compiled."""
    if not compile:
        return model.denoise
    return BucketedCall(model.denoise, row_budget, compile=True, device_type=model.device.type)
