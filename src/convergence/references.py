"""References a cell is measured against: its group's highest step count, the next swept
step count, another sampler's run, and on the analytic model the exact ODE limits.

Exact limits (DESIGN §3.1): from the cell's own start x_T = noise(seed) * sigmas[0] (CompVis
DDIM/PLMS: noise * sqrt(1 + sigmas[0]²), as they start), the
probability-flow ODE solved to the schedule's smallest positive sigma, then
- ``exact-denoised``: D(x(sigma_min)), where samplers whose last step is a denoise end;
- ``exact-zero``: the ODE continued to sigma = 0;
- ``exact-end``: x(sigma_min) itself, only for schedules that stop above 0 (ddim_uniform).
Solves are batched over rows that share (sigma_start, sigma_min, cfg) and cached in
``<study>/exact/<key>.npz`` so a re-analysis costs nothing.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import torch

from convergence.models.analytic import AnalyticModel, exact_solution
from convergence.samplers.schedules import get_sigmas
from convergence.store import Store, atomic_write_bytes

EXACT_LIMITS = ("exact-denoised", "exact-zero", "exact-end")


def schedule_span(model, schedule: str, steps: int) -> tuple[float, float, bool]:
    """(sigma_start, smallest positive sigma, whether the schedule stops above 0)."""
    s = get_sigmas(model, schedule, steps)
    pos = s[s > 0]
    return float(s[0]), float(pos.min()), bool(s[-1] > 0)


def _key(model_hash: str, row: dict, s0: float, smin: float, rtol: float, w: int, h: int,
         start: float) -> str:
    payload = json.dumps({"m": model_hash, "p": row["prompt"], "t": row["topic"],
                          "seed": int(row["seed"]), "cfg": float(row["cfg"]), "s0": s0,
                          "start": start,
                          "smin": smin, "rtol": rtol, "w": w, "h": h}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def exact_limits(model: AnalyticModel, store: Store, rows: list[dict], rtol: float,
                 batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """Exact limits for each row (dict with model_hash, prompt, topic, seed, cfg, schedule,
    steps, width, height): {limit name: float64 sample}. Cached per unique start."""
    out: list[dict[str, np.ndarray] | None] = [None] * len(rows)
    todo: dict[tuple, list[tuple[int, str]]] = {}
    for i, r in enumerate(rows):
        s0, smin, stops = schedule_span(model, r["schedule"], int(r["steps"]))
        start = start_scale(r["sampler"], s0)
        key = _key(r["model_hash"], r, s0, smin, rtol, int(r["width"]), int(r["height"]), start)
        path = store.root / "exact" / f"{key}.npz"
        if path.exists():
            with np.load(path) as f:
                out[i] = {k: f[k] for k in f.files}
        else:
            todo.setdefault((s0, smin, float(r["cfg"]), stops, start), []).append((i, key))
        if out[i] is not None and not stops:
            out[i].pop("exact-end", None)
    for (s0, smin, cfg_scale, stops, start), items in todo.items():
        unique: dict[str, int] = {}
        for i, key in items:
            unique.setdefault(key, i)
        keys = list(unique)
        for start in range(0, len(keys), batch_size):
            chunk = keys[start:start + batch_size]
            rr = [rows[unique[k]] for k in chunk]
            w, h = int(rr[0]["width"]), int(rr[0]["height"])
            x0 = model.initial_noise([int(r["seed"]) for r in rr], w, h).to(torch.float64) * start
            cond = model.encode_prompts([r["prompt"] for r in rr], [r["topic"] for r in rr])
            with torch.no_grad():
                x_min = exact_solution(model, x0, s0, smin, cond, cfg_scale, rtol=rtol, atol=rtol)
                den = _denoise(model, x_min, smin, cond, cfg_scale)
                zero = exact_solution(model, x_min, smin, 0.0, cond, cfg_scale, rtol=rtol, atol=rtol)
            for j, k in enumerate(chunk):
                res = {"exact-denoised": den[j].numpy(), "exact-zero": zero[j].numpy(),
                       "exact-end": x_min[j].numpy()}
                buf = io.BytesIO()
                np.savez_compressed(buf, **res)
                atomic_write_bytes(store.root / "exact" / f"{k}.npz", buf.getvalue())
                for i, key in items:
                    if key == k:
                        out[i] = {n: v for n, v in res.items() if stops or n != "exact-end"}
    return out  # type: ignore[return-value]


def start_scale(sampler: str, s0: float) -> float:
    """Initial noise scale of the sampler's own start: CompVis DDIM/PLMS start at
    noise * sqrt(1 + sigma_0²) (samplers/compvis.py), every other at noise * sigma_0."""
    from convergence.samplers.registry import resolve_sampler
    return float(np.sqrt(1 + s0**2)) if resolve_sampler(sampler).spec.family == "compvis" else s0


def _denoise(model, x, sigma, cond, cfg_scale):
    from convergence.models.base import GuidedDenoiser
    s = torch.full((x.shape[0],), float(sigma), dtype=torch.float64)
    return GuidedDenoiser(model)(x, s, conditioning=cond, cfg_scale=cfg_scale)
