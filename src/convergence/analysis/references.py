"""References a cell is measured against: its group's highest step count, the next swept
step count, another sampler's run, and on the analytic model the exact ODE limits.

Exact limits (DESIGN §3.1): from the cell's own start x_T = noise(seed) * noise_scale at
sigma_start (noise_scale = sigma_start, or sqrt(1 + sigma_start²) for CompVis DDIM/PLMS), the
probability-flow ODE solved to the schedule's smallest positive sigma, then
- ``exact-denoised``: D(x(sigma_min)), where samplers whose last step is a denoise end;
- ``exact-zero``: the ODE continued to sigma = 0;
- ``exact-end``: x(sigma_min) itself, only for schedules that stop above 0 (ddim_uniform).
The sigma span comes from the cell's row (the runner records it). Solves are batched over
rows that share (sigma_start, sigma_min, cfg) and cached in ``<study>/exact/<key>.npz`` so a
re-analysis costs nothing.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from convergence.analysis.tables import GROUP
from convergence.core.registries import EXACT_LIMITS, REFERENCES, register_reference
from convergence.core.store import Store, atomic_write_bytes
from convergence.models.base import GuidedDenoiser
from convergence.models.device import torch_threads
from convergence.samplers.spec import resolve_sampler

__all__ = ["EXACT_LIMITS", "REFERENCES", "exact_limits", "pairs"]


def canonical_sampler(name: str, known: set[str]) -> str:
    """A sampler name as stored (aliases such as K_HEUN resolve through the registry, which
    is imported only for a name the store does not already use)."""
    if name in known:
        return name
    return resolve_sampler(name).spec.name


#: cell references by name (``analysis.references=[...]``); ``SAMPLER@STEPS`` and the exact
#: limits are built in (:func:`pairs`)
@register_reference("highest")
def _highest(df: pd.DataFrame) -> list[tuple[int, int]]:
    """Each cell against its curve's highest step count."""
    out: list[tuple[int, int]] = []
    for _, g in df.groupby(GROUP, sort=False):
        idx = list(g.sort_values("steps").index)
        out += [(i, idx[-1]) for i in idx[:-1]]
    return out


@register_reference("next")
def _next(df: pd.DataFrame) -> list[tuple[int, int]]:
    """Each cell against the next swept step count of its curve."""
    out: list[tuple[int, int]] = []
    for _, g in df.groupby(GROUP, sort=False):
        idx = list(g.sort_values("steps").index)
        out += list(zip(idx[:-1], idx[1:], strict=False))
    return out


def pairs(df: pd.DataFrame, ref: str) -> list[tuple[int, int]]:
    """(row, reference row) pairs of ``df`` for a cell reference name: a registered one
    (``highest``, ``next``, ...) or ``SAMPLER@STEPS`` / ``SAMPLER@max`` (same prompt, seed
    and CFG scale; same schedule when the other sampler ran it, else its first)."""
    out: list[tuple[int, int]] = []
    if "@" not in ref:
        return list(REFERENCES.get(ref)(df))
    sampler, _, steps = ref.partition("@")
    cand = df[df.sampler == canonical_sampler(sampler, set(df.sampler))]
    if cand.empty:
        return []
    cand = cand[cand.steps == (int(cand.steps.max()) if steps == "max" else int(steps))]
    lookup: dict[tuple, dict] = {}
    for i, r in cand.iterrows():
        lookup.setdefault((r.model, r.prompt, r.seed, r.cfg), {})[r.schedule] = i
    for i, r in df.iterrows():
        hit = lookup.get((r.model, r.prompt, r.seed, r.cfg))
        if hit:
            j = hit.get(r.schedule, hit[sorted(hit)[0]])
            if j != i:
                out.append((i, j))
    return out


def _key(row: dict, rtol: float) -> str:
    payload = json.dumps({"m": row["model_hash"], "p": row["prompt"], "t": row["topic"],
                          "seed": int(row["seed"]), "cfg": float(row["cfg"]),
                          "s0": float(row["sigma_start"]), "smin": float(row["sigma_min"]),
                          "scale": float(row["noise_scale"]),
                          "rtol": rtol, "w": int(row["width"]), "h": int(row["height"])},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def exact_limits(model, store: Store, rows: list[dict], rtol: float, batch_size: int = 16,
                 progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Exact limits for each row of the cells table: {limit name: float64 sample}.

    Cached per unique start. The uncached starts are solved in chunks of up to
    ``batch_size`` that share a sigma span, on one torch thread: the solver's products are
    small (a few hundred dimensions), so threads inside them cost more than they give.
    Measured on the default study's 135 starts (2-core Xeon, quiet): 7.1 s with two
    threads, 3.9 s with one; two chunks at once in two Python threads took 10.3 s (the
    solver's per-step Python work serialises on the GIL). Solving all 135 starts as one
    state was slower too: 4.1 s with each row's sigma span mapped onto [0, 1], 6.1 s in
    common log-sigma segment by segment (the rows' switches between pictures fall at
    different times, so the shared steps are small everywhere: more row-steps, and at
    this size the denoiser's products, not the solver's overhead, are the cost)."""
    out: list[dict[str, np.ndarray] | None] = [None] * len(rows)
    # span -> {start's cache key: the rows that share that start}
    todo: dict[tuple, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        key = _key(r, rtol)
        path = store.root / "exact" / f"{key}.npz"
        if path.exists():
            with np.load(path) as f:
                out[i] = {k: f[k] for k in f.files}
        else:
            todo.setdefault((float(r["sigma_start"]), float(r["sigma_min"]), float(r["cfg"]),
                             float(r["noise_scale"])), {}).setdefault(key, []).append(i)
    chunks = [(span, [(k, rows[starts[k][0]]) for k in list(starts)[lo:lo + batch_size]])
              for span, starts in todo.items() for lo in range(0, len(starts), batch_size)]
    where = {k: idx for starts in todo.values() for k, idx in starts.items()}
    n_solves = sum(len(c) for _, c in chunks)
    with tqdm(total=n_solves, desc="analyze: exact ODE solves", unit="start",
              disable=not progress or n_solves == 0) as bar, torch_threads(1):
        for span, chunk in chunks:
            for (key, _), limits in zip(chunk, _solve_chunk(model, rtol, span, chunk),
                                        strict=True):
                buf = io.BytesIO()
                np.savez(buf, **limits)  # uncompressed: float64 noise barely compresses
                atomic_write_bytes(store.root / "exact" / f"{key}.npz", buf.getvalue())
                for i in where[key]:
                    out[i] = dict(limits)
            bar.update(len(chunk))
    # x(sigma_min) is a limit on every schedule: the one a sampler that stops at sigma_min
    # approaches (dpm_fast, dpm_adaptive: limit="sigma_min") even where the schedule's last
    # sigma is 0
    return out  # type: ignore[return-value]


def _solve_chunk(model, rtol: float, span: tuple[float, float, float, float],
                 chunk: list[tuple[str, dict]]) -> list[dict[str, np.ndarray]]:
    """The exact limits of starts that share (sigma_start, sigma_min, cfg, noise scale)."""
    # imported when needed: its pictures and kernels cost a second other models need not pay
    from convergence.models.analytic import exact_solution
    s0, smin, cfg_scale, scale = span
    rr = [r for _, r in chunk]
    w, h = int(rr[0]["width"]), int(rr[0]["height"])
    x0 = model.initial_noise([int(r["seed"]) for r in rr], w, h).to(torch.float64) * scale
    cond = model.encode_prompts([r["prompt"] for r in rr], [r["topic"] for r in rr])
    with torch.no_grad():
        x_min = exact_solution(model, x0, s0, smin, cond, cfg_scale, rtol=rtol, atol=rtol)
        den = denoise(model, x_min, smin, cond, cfg_scale)
        zero = exact_solution(model, x_min, smin, 0.0, cond, cfg_scale, rtol=rtol, atol=rtol)
    return [{"exact-denoised": den[j].numpy(), "exact-zero": zero[j].numpy(),
             "exact-end": x_min[j].numpy()} for j in range(len(rr))]


def denoise(model, x: torch.Tensor, sigma: float, cond, cfg_scale: float) -> torch.Tensor:
    """The guided denoiser D(x, sigma) at one sigma for a batch."""
    s = torch.full((x.shape[0],), float(sigma), dtype=torch.float64)
    return GuidedDenoiser(model)(x, s, conditioning=cond, cfg_scale=cfg_scale)
