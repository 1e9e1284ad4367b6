"""Execute cells: one batched sampler run per group of cells that share sigmas, with
NFE counting, timing, resume from the store and a progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from convergence.config import Config
from convergence.errors import ConvergenceError, Interrupted
from convergence.models import build_model
from convergence.models.base import CountingDenoiser, GuidedDenoiser, Model, NonFiniteSample
from convergence.models.device import device_name
from convergence.plan import Cell, batches, expand
from convergence.samplers.noise import CellNoise
from convergence.samplers.registry import SamplingContext, resolve_sampler
from convergence.samplers.schedules import get_sigmas
from convergence.shard import select_shard
from convergence.store import Store


@dataclass
class BatchResult:
    samples: torch.Tensor       # final samples in model space
    images: np.ndarray          # uint8 (B, H, W, 3)
    nfe: int                    # denoiser calls per image
    model_evals: float          # rows evaluated per image (CFG doubles it)
    seconds: float              # wall time of the batch
    model_seconds: float        # of which inside the model


def describe(cell: Cell) -> str:
    return (f"cell {cell.hash} (sampler={cell.sampler}, schedule={cell.schedule}, "
            f"steps={cell.steps}, seed={cell.seed}, topic={cell.topic}, cfg={cell.cfg})")


def sample_batch(model: Model, cells: list[Cell], options: dict | None = None) -> BatchResult:
    """Run one batch of cells that share sampler, schedule, steps, cfg and size."""
    first = cells[0]
    assert all(c.batch_key == first.batch_key for c in cells), "cells of a batch must share sigmas"
    spec = resolve_sampler(first.sampler).spec
    assert spec.rows_independent or len(cells) == 1, f"{spec.name} must run one cell per batch"
    sigma_dtype = torch.float32 if model.dtype in (torch.float16, torch.bfloat16) else model.dtype
    sigmas = get_sigmas(model, first.schedule, first.steps).to(model.device, sigma_dtype)
    seeds = [c.seed for c in cells]
    x = model.initial_noise(seeds, first.width, first.height) * sigmas[0].to(model.dtype)
    counter = CountingDenoiser(GuidedDenoiser(model))
    start = time.perf_counter()
    with torch.no_grad():
        cond = model.encode_prompts([c.prompt for c in cells], [c.topic for c in cells])
        extra_args = {"conditioning": cond, "cfg_scale": first.cfg}
        ctx = SamplingContext(noise=CellNoise(seeds), steps=first.steps,
                              alphas_cumprod=model.alphas_cumprod, options=dict(options or {}),
                              scheduler_config=getattr(model, "scheduler_config", None))
        try:
            out = spec.fn(counter, x, sigmas, extra_args, ctx)
        except NonFiniteSample as e:
            raise ConvergenceError(f"NaN/inf in the sample at sigma={e.sigma:.4g} for "
                                   + "; ".join(describe(cells[r]) for r in e.rows)) from None
        bad = (~torch.isfinite(out.flatten(1))).any(1).nonzero().flatten().tolist()
        if bad:
            raise ConvergenceError("NaN/inf in the final sample of "
                                   + "; ".join(describe(cells[r]) for r in bad))
        images = model.decode(out)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return BatchResult(out.detach().cpu(), images, counter.calls,
                       counter.rows_evaluated / len(cells), seconds, counter.model_seconds)


def _sample_array(model: Model, sample: torch.Tensor) -> np.ndarray:
    """fp32 for the analytic model, fp16 is enough for latents (README: Store)."""
    dtype = np.float32 if model.name == "analytic" else np.float16
    return sample.to(torch.float32).numpy().astype(dtype)


#: a cell whose float sample leaves the data's range (about 1: pixels in [-1, 1], SD latents
#: times the VAE scaling factor have unit variance) by this factor is flagged as diverged
DIVERGENCE_FACTOR = 1e3


def cell_metadata(model: Model, sampler: str, schedule: str, steps: int) -> dict:
    """What the analysis needs to know about a cell without importing the samplers or
    building a model: the sampler's family and stochasticity, and the sigma span the
    exact references start and stop at (stored in each cell row)."""
    spec = resolve_sampler(sampler).spec
    s = get_sigmas(model, schedule, steps)
    return {"family": spec.family, "stochastic": bool(spec.stochastic),
            "sigma_start": float(s[0]), "sigma_min": float(s[s > 0].min()),
            "stops_above_zero": bool(s[-1] > 0)}


@dataclass
class RunSummary:
    store: Store
    cells: list[Cell]
    ran: int
    skipped: int
    seconds: float
    #: cells of this run flagged as diverged (column ``diverged``)
    diverged: list[str] = field(default_factory=list)


def study_root(cfg: Config) -> Path:
    return Path(cfg.results_dir) / cfg.name


def run_study(cfg: Config, model: Model | None = None) -> RunSummary:
    """Plan the study, skip cells already in the store, run the rest batch by batch.

    Each finished batch is stored before the next starts, so an interrupted run resumes
    where it stopped and gives the same images as an uninterrupted one. Cells whose files
    are missing or damaged are recomputed; cells another live writer has claimed are left
    to it (and waited for), so overlapping runs do not compute a cell twice."""
    model = model or build_model(cfg.model, cfg.width, cfg.height)
    planned = expand(cfg, model.name, model.fingerprint())
    cells = select_shard(planned, cfg.shard)
    store = Store(study_root(cfg))
    store.clean_stale()
    done = store.done_hashes()
    todo = [c for c in cells if c.hash not in done]
    damaged = set(store.damaged)
    start = time.perf_counter()
    ran, diverged = 0, []
    try:
        with store.leases(cfg.claim_seconds) as leases, \
                tqdm(total=len(todo), desc=f"{cfg.name}: cells", unit="cell",
                     disable=not cfg.progress) as bar:
            computed: set[str] = set()

            def finished() -> set[str]:
                """Stored by this run, or by others since it started (not the damaged rows)."""
                return (store.row_hashes() - damaged) | computed

            pending = todo
            while pending:
                took = 0
                for batch in batches(pending, cfg.batch_size):
                    mine = set(leases.take([c.hash for c in batch], finished))
                    batch = [c for c in batch if c.hash in mine]
                    if not batch:
                        continue
                    res = sample_batch(model, batch, cfg.sampler_options)
                    rows = []
                    meta = cell_metadata(model, batch[0].sampler, batch[0].schedule, batch[0].steps)
                    for i, cell in enumerate(batch):
                        max_abs = float(res.samples[i].abs().max())
                        rows.append({
                            "hash": cell.hash, **cell.__dict__, **meta, "nfe": res.nfe,
                            "model_evals": res.model_evals,
                            "seconds": res.seconds / len(batch),
                            "model_seconds": res.model_seconds / len(batch),
                            "batch_size": len(batch), "device": str(model.device),
                            **store.write_image(cell.hash, res.images[i]),
                            **store.write_sample(cell.hash, _sample_array(model, res.samples[i])),
                            "max_abs": max_abs, "diverged": max_abs > DIVERGENCE_FACTOR,
                        })
                    store.append_rows(rows)
                    computed |= mine
                    leases.release(mine)
                    diverged += [r["hash"] for r in rows if r["diverged"]]
                    if not ran:  # only a run that stored something describes the study
                        _write_study(store, cfg, model, planned)
                    ran += len(batch)
                    took += len(batch)
                    bar.update(len(batch))
                stored = finished()
                pending = [c for c in pending if c.hash not in stored]
                if pending and not took:
                    time.sleep(min(1.0, cfg.claim_seconds / 8))  # held by other writers
    except KeyboardInterrupt:
        have = len(done & {c.hash for c in cells}) + ran
        raise Interrupted(f"interrupted: {have} of {len(cells)} cells of study {cfg.name!r} are "
                          f"stored in {store.root} ({ran} by this run); run the same command "
                          "again to resume (stored cells are not recomputed)") from None
    if not ran:
        _write_study(store, cfg, model, planned)
    store.compact()
    return RunSummary(store, cells, ran, len(cells) - len(todo),
                      time.perf_counter() - start, diverged)


def _write_study(store: Store, cfg: Config, model: Model, planned: list[Cell]) -> None:
    store.write_json("study.json", {"config": _plain(cfg), "model": model.fingerprint(),
                                    "n_cells": len(planned),
                                    "device_name": device_name(model.device)})


def _plain(cfg: Config) -> dict:
    from dataclasses import asdict
    return asdict(cfg)
