"""The row budget of a model call: ``batch_size`` in the config.

A number is the budget (rows per model call, CFG rows included). ``auto`` sizes it from
the memory free on the model's device divided by a per-row cost: on CUDA the cost is
measured (peak memory of a small probe call), elsewhere it is the model's own estimate
(:meth:`Model.row_bytes`) against the RAM the OS reports as available.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil
import torch

from convergence.config.validate import parse_batch_size
from convergence.models.base import Model

__all__ = ["AUTO_MAX_ROWS", "auto_rows", "parse_batch_size", "probe_row_bytes", "row_budget"]

#: share of the free memory a call may use (the rest: samples in flight, the allocator)
MEMORY_SHARE = 0.5
#: ``auto`` never goes above this many rows: on the CPU the analytic model's cost per row
#: is flat from 32 to 128 rows and rises beyond (cache misses; `convergence bench` prints
#: the curve), and a bigger call only delays the first stored results
AUTO_MAX_ROWS = 128
#: rows of the probe call that measures a CUDA model's memory per row
PROBE_ROWS = 2


def free_memory(device: torch.device) -> int:
    """Bytes free for a model call on ``device`` (CUDA: free device memory; else RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def auto_rows(free_bytes: int, row_bytes: int, cap: int = AUTO_MAX_ROWS) -> int:
    """Rows that fit MEMORY_SHARE of ``free_bytes`` at ``row_bytes`` each, in [1, cap]."""
    return max(1, min(cap, int(MEMORY_SHARE * free_bytes // max(1, row_bytes))))


def probe_row_bytes(model: Model, width: int, height: int,
                    peak: Callable[[], int], reset: Callable[[], None]) -> int:
    """Peak memory of a PROBE_ROWS-row model call, per row (``peak``/``reset`` read and
    clear the device's peak-allocation counter)."""
    x = model.initial_noise(list(range(PROBE_ROWS)), width, height)
    sigma = torch.full((PROBE_ROWS,), float(model.sigma_max), dtype=torch.float32,
                       device=model.device)
    cond = model.encode_prompts([""] * PROBE_ROWS, [None] * PROBE_ROWS).uncond
    reset()
    base = peak()
    with torch.no_grad():
        model.denoise(x, sigma.to(x.dtype), cond)
    return max(1, (peak() - base) // PROBE_ROWS)


def row_budget(setting, model: Model, width: int, height: int) -> int:
    """The rows per model call for a ``batch_size`` setting on this model."""
    value = parse_batch_size(setting)
    if value != "auto":
        return int(value)
    if model.device.type == "cuda":
        dev = model.device
        per_row = probe_row_bytes(model, width, height,
                                  lambda: torch.cuda.max_memory_allocated(dev),
                                  lambda: torch.cuda.reset_peak_memory_stats(dev))
    else:
        per_row = model.row_bytes(width, height)
    return auto_rows(free_memory(model.device), per_row)
