"""Execute cells: one sampler run per group of cells that share sigmas, the groups side
by side with their model calls gathered into one (``convergence.gather``), with NFE
counting, timing, call statistics, resume from the store and a progress bar."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from convergence.budget import row_budget
from convergence.compiled import model_call
from convergence.config import Config
from convergence.errors import ConvergenceError
from convergence.gather import Gatherer, Job, Ledger
from convergence.models import build_model
from convergence.models.base import (
    CountingDenoiser,
    DenoiseCall,
    GuidedDenoiser,
    Model,
    NonFiniteSample,
    model_lock,
)
from convergence.models.device import device_name
from convergence.plan import Cell, batches, expand, rows_per_cell
from convergence.samplers.compvis import start_noise_scale
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


def sample_batch(model: Model, cells: list[Cell], options: dict | None = None,
                 call: DenoiseCall | None = None) -> BatchResult:
    """Run one batch of cells that share sampler, schedule, steps, cfg and size.

    ``call`` evaluates the model rows (``model.denoise`` unless a gatherer merges them
    with other batches' rows)."""
    first = cells[0]
    assert all(c.batch_key == first.batch_key for c in cells), "cells of a batch must share sigmas"
    spec = resolve_sampler(first.sampler).spec
    assert spec.rows_independent or len(cells) == 1, f"{spec.name} must run one cell per batch"
    sigmas = get_sigmas(model, first.schedule, first.steps).to(model.device, model.sample_dtype)
    seeds = [c.seed for c in cells]
    x = model.initial_noise(seeds, first.width, first.height) * sigmas[0]
    counter = CountingDenoiser(GuidedDenoiser(model, call))
    start = time.perf_counter()
    with torch.no_grad():
        with model_lock(model):
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
        with model_lock(model):
            images = model.decode(out)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return BatchResult(out.detach().cpu(), images, counter.calls,
                       counter.rows_evaluated / len(cells), seconds, counter.model_seconds)


def _sample_array(model: Model, sample: torch.Tensor) -> np.ndarray:
    """float32 for every model: fp16 latents of SD (|x| ~ 10) round by up to 1e-2, more
    than the "converged" threshold."""
    return sample.to(torch.float32).numpy()


def cell_metadata(model: Model, sampler: str, schedule: str, steps: int) -> dict:
    """What the analysis needs to know about a cell without importing the samplers or
    building a model: the sampler's family and stochasticity, and the sigma span the
    exact references start and stop at (stored in each cell row)."""
    spec = resolve_sampler(sampler).spec
    s = get_sigmas(model, schedule, steps)
    return {"family": spec.family, "stochastic": bool(spec.stochastic),
            "sigma_start": float(s[0]), "noise_scale": start_noise_scale(spec.family, float(s[0])),
            "sigma_min": float(s[s > 0].min()),
            "stops_above_zero": bool(s[-1] > 0)}


@dataclass
class RunSummary:
    store: Store
    cells: list[Cell]
    ran: int
    skipped: int
    seconds: float


def study_root(cfg: Config) -> Path:
    return Path(cfg.results_dir) / cfg.name


def run_study(cfg: Config, model: Model | None = None, only: set[str] | None = None) -> RunSummary:
    """Plan the study, skip cells already in the store, run the rest.

    The groups of cells run side by side, their model calls gathered up to the row
    budget (``batch_size``); each finished group is stored at once, so an interrupted run
    resumes where it stopped and gives the same images as an uninterrupted one. ``only``:
    run just these cell hashes of the plan (the adaptive search's probes, adaptive.py)."""
    model = model or build_model(cfg.model, cfg.width, cfg.height)
    planned = expand(cfg, model.name, model.fingerprint())
    cells = [c for c in select_shard(planned, cfg.shard) if only is None or c.hash in only]
    store = Store(study_root(cfg))
    done = store.done_hashes()
    todo = [c for c in cells if c.hash not in done]
    store.write_json("study.json", {"config": _plain(cfg), "model": model.fingerprint(),
                                    "n_cells": len(planned),
                                    "device_name": device_name(model.device)})
    start = time.perf_counter()
    budget = row_budget(cfg.batch_size, model, cfg.width, cfg.height)
    gatherer = Gatherer(model_call(model, budget, bool(getattr(cfg.model, "compile", False))),
                        budget, lock=model_lock(model))
    # files are written by one writer thread while the next model calls run (the writes
    # wait on the disk, not the CPU); a failed write stops the run at the next batch
    with tqdm(total=len(todo), desc=f"{cfg.name}: cells", unit="cell",
              disable=not cfg.progress) as bar, \
            ThreadPoolExecutor(1, thread_name_prefix="convergence-store") as writer:
        writes: list[Future] = []

        def store_batch(job: Job, res: BatchResult, ledger: Ledger) -> None:
            for f in writes:
                if f.done():
                    f.result()
            writes.append(writer.submit(store_rows, store, model, job.payload, res, ledger, budget))
            bar.update(len(job.payload))

        stats = gatherer.run(_jobs(model, batches(todo, budget), cfg.sampler_options), store_batch)
        for f in writes:
            f.result()
    seconds = time.perf_counter() - start
    if todo:
        record_run(store, {
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cells": len(todo), "batch_size": cfg.batch_size, "row_budget": budget,
            "device": str(model.device), "threads": torch.get_num_threads(),
            "seconds": seconds, **stats.as_dict(),
            "model_share": stats.model_seconds / seconds if seconds > 0 else 0.0})
    return RunSummary(store, cells, len(todo), len(cells) - len(todo), seconds)


def _jobs(model: Model, plan: list[list[Cell]], options: dict | None) -> list[Job]:
    """One job per batch, longest first (fewer idle rows at the end); row-coupled
    samplers last, with their own model calls."""
    jobs = []
    for batch in plan:
        solo = not resolve_sampler(batch[0].sampler).spec.rows_independent

        def fn(call: DenoiseCall, batch: list[Cell] = batch) -> BatchResult:
            return sample_batch(model, batch, options, call)

        jobs.append(Job(fn, rows=sum(rows_per_cell(c) for c in batch), solo=solo, payload=batch))
    return sorted(jobs, key=lambda j: (j.solo, -j.payload[0].steps))


def store_rows(store: Store, model: Model, batch: list[Cell], res: BatchResult, ledger: Ledger,
               budget: int) -> None:
    """Write a finished batch: sample, image and one table row per cell."""
    rows = []
    meta = cell_metadata(model, batch[0].sampler, batch[0].schedule, batch[0].steps)
    for i, cell in enumerate(batch):
        store.write_sample(cell.hash, _sample_array(model, res.samples[i]))
        store.write_image(cell.hash, res.images[i])
        rows.append({
            "hash": cell.hash, **cell.__dict__, **meta, "nfe": res.nfe,
            "model_evals": res.model_evals,
            "seconds": ledger.seconds / len(batch),
            "model_seconds": ledger.model_seconds / len(batch),
            "batch_size": len(batch), "rows_per_call": ledger.rows_per_call,
            "row_budget": budget, "device": str(model.device),
            "image": str(store.image_path(cell.hash).relative_to(store.root)),
            "sample": str(store.sample_path(cell.hash).relative_to(store.root)),
        })
    store.append_rows(rows)


RUNS = "runs.json"


def record_run(store: Store, run: dict) -> None:
    """Append this run's call statistics to ``runs.json`` (one entry per run command)."""
    store.write_json(RUNS, {"runs": [*load_runs(store.root), run]})


def load_runs(root: Path) -> list[dict]:
    """The call statistics of every run of a study (empty if none recorded)."""
    path = Path(root) / RUNS
    return json.loads(path.read_text())["runs"] if path.exists() else []


def _plain(cfg: Config) -> dict:
    from dataclasses import asdict
    return asdict(cfg)
