"""Execute cells: one sampler run per group of cells that share sigmas, the groups side
by side with their model calls gathered into one (``convergence.run.gather``), with NFE
counting, timing, call statistics, resume from the store and a progress bar."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from convergence.config.schema import Config
from convergence.core.allocator import keep_freed_memory
from convergence.core.errors import ConvergenceError, Interrupted
from convergence.core.store import Store
from convergence.models import build_model
from convergence.models.base import (
    CountingDenoiser,
    DenoiseCall,
    GuidedDenoiser,
    Model,
    NonFiniteSample,
    model_lock,
    require_guidance,
)
from convergence.models.device import device_name
from convergence.run.budget import row_budget
from convergence.run.compiled import model_call
from convergence.run.gather import CallStats, Gatherer, Job, Ledger
from convergence.run.plan import Cell, batches, expand, rows_per_cell
from convergence.run.shard import select_shard
from convergence.samplers import k_sampling
from convergence.samplers.compvis import start_noise_scale
from convergence.samplers.noise import CellNoise
from convergence.samplers.spec import SamplingContext, resolve_sampler


@dataclass
class BatchResult:
    samples: torch.Tensor       # final samples in model space
    images: np.ndarray          # uint8 (B, H, W, 3)
    nfe: int                    # denoiser calls per image
    model_evals: float          # rows evaluated per image (CFG doubles it)
    seconds: float              # wall time of the batch
    model_seconds: float        # of which inside the model
    #: float (B, H, W, 3) before 8-bit rounding, for latent models (Model.decode_both)
    decoded: np.ndarray | None = None


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
    sigmas = spec.sigmas(model, first.schedule, first.steps).to(model.device, model.sample_dtype)
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
            images, decoded = model.decode_both(out)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return BatchResult(out.detach().cpu(), images, counter.calls,
                       counter.rows_evaluated / len(cells), seconds, counter.model_seconds,
                       decoded)


def _sample_array(model: Model, sample: torch.Tensor) -> np.ndarray:
    """float32 for every model: fp16 latents of SD (|x| ~ 10) round by up to 1e-2, more
    than the "converged" threshold."""
    return sample.to(torch.float32).numpy()


def cell_metadata(model: Model, sampler: str, schedule: str, steps: int) -> dict:
    """What the analysis needs to know about a cell without importing the samplers or
    building a model: the sampler's family and stochasticity, and the sigma span the
    exact references start and stop at, and the range the image clips the sample to
    (stored in each cell row)."""
    spec = resolve_sampler(sampler).spec
    s = spec.sigmas(model, schedule, steps)
    return {"family": spec.family, "stochastic": bool(spec.stochastic),
            "sigma_start": float(s[0]), "noise_scale": start_noise_scale(spec.family, float(s[0])),
            "sigma_min": float(s[s > 0].min()),
            "stops_above_zero": bool(s[-1] > 0),
            "display_lo": float(model.display_range[0]),
            "display_hi": float(model.display_range[1])}


#: a cell whose float sample leaves the data's range (about 1: pixels in [-1, 1], SD latents
#: times the VAE scaling factor have unit variance) by this factor is flagged as diverged
DIVERGENCE_FACTOR = 1e3


#: finished batches that may wait for the writer thread: more pause the model calls, so a
#: slow disk cannot pile up results (memory, and work a killed run has to redo)
MAX_UNWRITTEN = 4


@dataclass
class RunSummary:
    store: Store
    cells: list[Cell]
    ran: int
    skipped: int
    seconds: float
    #: cells of this run flagged as diverged (column ``diverged``)
    diverged: list[str] = field(default_factory=list)


def run_study(cfg: Config, model: Model | None = None, only: set[str] | None = None) -> RunSummary:
    """Plan the study, skip cells already in the store, run the rest.

    The groups of cells run side by side, their model calls gathered up to the row
    budget (``batch_size``); each finished group is stored at once, so an interrupted run
    resumes where it stopped and gives the same images as an uninterrupted one. Cells whose
    files are missing or damaged are recomputed; cells another live writer has claimed are
    left to it (and waited for), so overlapping runs do not compute a cell twice. ``only``:
    run just these cell hashes of the plan (the adaptive search's probes, adaptive.py)."""
    keep_freed_memory()  # the model calls' activations: freed and reused, not refaulted
    model = model or build_model(cfg.model, cfg.width, cfg.height)
    require_guidance(model, cfg.cfg)
    planned = expand(cfg, model.name, model.fingerprint())
    cells = [c for c in select_shard(planned, cfg.shard) if only is None or c.hash in only]
    store = Store(cfg.study_dir())
    store.clean_stale()
    done = store.done_hashes()  # damaged files count as missing: recomputed
    todo = [c for c in cells if c.hash not in done]
    # the samplers' modules (k-diffusion's is imported on first use) are imported here,
    # once, not by the gatherer's threads at the same moment
    k_sampling()
    for name in {c.sampler for c in todo}:
        resolve_sampler(name).spec.function()
    start = time.perf_counter()
    budget = row_budget(cfg.batch_size, model, cfg.width, cfg.height)
    call = model_call(model, budget, bool(getattr(cfg.model, "compile", False)))
    stats = CallStats()
    progress = Progress(store, set(store.damaged))
    try:
        # files are written by one writer thread while the next model calls run (the writes
        # wait on the disk, not the CPU); a failed write stops the run at the next batch
        with store.leases(cfg.claim_seconds) as leases, \
                tqdm(total=len(todo), desc=f"{cfg.name}: cells", unit="cell",
                     disable=not cfg.progress) as bar, \
                ThreadPoolExecutor(1, thread_name_prefix="convergence-store") as writer:
            writes: deque[Future] = deque()

            def write(job: Job, res: BatchResult, ledger: Ledger) -> None:
                progress.record(leases, model, job.payload, res, ledger, budget)
                if not progress.described:  # only once a cell is stored
                    _write_study(store, cfg, model, planned)
                    progress.described = True

            def store_batch(job: Job, res: BatchResult, ledger: Ledger) -> None:
                while writes and (writes[0].done() or len(writes) >= MAX_UNWRITTEN):
                    writes.popleft().result()
                writes.append(writer.submit(write, job, res, ledger))
                bar.update(len(job.payload))

            pending = todo
            while pending:
                # one gatherer streams every batch, longest first, each claimed only when
                # the gatherer has room for it; cells other writers hold are skipped here
                # and waited for below (a finished gatherer stays cancelled: one per pass)
                claimed: list[Cell] = []
                plan = _claimed(leases, _longest_first(batches(pending, budget)),
                                progress.finished, claimed)
                stats.add(Gatherer(call, budget, lock=model_lock(model)).run(
                    _jobs(model, plan, cfg.sampler_options), store_batch))
                while writes:
                    writes.popleft().result()
                stored = progress.finished()
                pending = [c for c in pending if c.hash not in stored]
                if pending and not claimed:
                    time.sleep(min(1.0, cfg.claim_seconds / 8))  # held by other writers
    except KeyboardInterrupt:
        have = len(done & {c.hash for c in cells}) + progress.ran
        raise Interrupted(f"interrupted: {have} of {len(cells)} cells of study {cfg.name!r} are "
                          f"stored in {store.root} ({progress.ran} by this run); run the same "
                          "command again to resume (stored cells are not recomputed)") from None
    if not progress.described:
        _write_study(store, cfg, model, planned)
    store.compact()
    seconds = time.perf_counter() - start
    if progress.ran:
        record_run(store, {
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cells": progress.ran, "batch_size": cfg.batch_size, "row_budget": budget,
            "device": str(model.device), "threads": torch.get_num_threads(),
            "seconds": seconds, **stats.as_dict(),
            "model_share": stats.model_seconds / seconds if seconds > 0 else 0.0})
    return RunSummary(store, cells, progress.ran, len(cells) - len(todo), seconds,
                      progress.diverged)


def _longest_first(plan: list[list[Cell]]) -> list[list[Cell]]:
    """Batches by falling NFE (fewer idle rows at the end of the run), row-coupled
    samplers last (they run alone, with their own model calls)."""

    def key(batch: list[Cell]) -> tuple[bool, int]:
        spec = resolve_sampler(batch[0].sampler).spec
        return not spec.rows_independent, -(spec.claimed_nfe(batch[0].steps) or batch[0].steps)

    return sorted(plan, key=key)


def _claimed(leases, plan: Iterable[list[Cell]], finished,
             claimed: list[Cell]) -> Iterator[list[Cell]]:
    """The batches of ``plan``, each cut to the cells this writer could claim (nobody
    else holds them or has stored them), claimed one batch at a time as they are asked
    for; the claims are released as each batch is stored. ``claimed`` collects them."""
    for batch in plan:
        mine = set(leases.take([c.hash for c in batch], finished))
        batch = [c for c in batch if c.hash in mine]
        if batch:
            claimed += batch
            yield batch


class Progress:
    """What this run has stored, for claims (``finished``) and the summary."""

    def __init__(self, store: Store, damaged: set[str]):
        self.target = store
        self.damaged = damaged
        self.computed: set[str] = set()
        self.ran = 0
        self.diverged: list[str] = []
        self.described = False

    def finished(self) -> set[str]:
        """Stored by this run, or by other writers since it started (not damaged rows)."""
        return (self.target.row_hashes() - self.damaged) | self.computed

    def record(self, leases, model: Model, batch: list[Cell], res: BatchResult, ledger: Ledger,
               budget: int) -> None:
        """Store a finished batch, release its claims and count it."""
        rows = store_rows(self.target, model, batch, res, ledger, budget)
        hashes = {c.hash for c in batch}
        self.computed |= hashes
        leases.release(hashes)  # after the rows: others see the claim or the row
        self.ran += len(batch)
        self.diverged += [r["hash"] for r in rows if r["diverged"]]


def _write_study(store: Store, cfg: Config, model: Model, planned: list[Cell]) -> None:
    """study.json, and the model as the analysis will use it (Model.record)."""
    store.write_json("study.json", {"config": _plain(cfg), "model": model.fingerprint(),
                                    "n_cells": len(planned),
                                    "device_name": device_name(model.device)})
    model.record(store.root)


def _jobs(model: Model, plan: Iterable[list[Cell]], options: dict | None) -> Iterator[Job]:
    """One job per batch, in the plan's order, made as the gatherer asks for them."""
    for batch in plan:
        solo = not resolve_sampler(batch[0].sampler).spec.rows_independent

        def fn(call: DenoiseCall, batch: list[Cell] = batch) -> BatchResult:
            return sample_batch(model, batch, options, call)

        yield Job(fn, rows=sum(rows_per_cell(c) for c in batch), solo=solo, payload=batch)


def store_rows(store: Store, model: Model, batch: list[Cell], res: BatchResult, ledger: Ledger,
               budget: int) -> list[dict]:
    """Write a finished batch: sample, image, decoded float image (latent models) and one
    table row per cell (with the files' sha256 and whether the sample diverged); returns
    the rows."""
    rows = []
    meta = cell_metadata(model, batch[0].sampler, batch[0].schedule, batch[0].steps)
    for i, cell in enumerate(batch):
        max_abs = float(res.samples[i].abs().max())
        rows.append({
            "hash": cell.hash, **cell.__dict__, **meta, "nfe": res.nfe,
            "model_evals": res.model_evals,
            "seconds": ledger.seconds / len(batch),
            "model_seconds": ledger.model_seconds / len(batch),
            "batch_size": len(batch), "rows_per_call": ledger.rows_per_call,
            "row_budget": budget, "device": str(model.device),
            **store.write_image(cell.hash, res.images[i]),
            **store.write_sample(cell.hash, _sample_array(model, res.samples[i])),
            **store.write_decoded(cell.hash, None if res.decoded is None else res.decoded[i]),
            "max_abs": max_abs, "diverged": max_abs > DIVERGENCE_FACTOR,
        })
    store.append_rows(rows)
    return rows


RUNS = "runs.json"


def record_run(store: Store, run: dict) -> None:
    """Append this run's call statistics to ``runs.json`` (one entry per run command),
    read and replaced under the store's lock so concurrent runs keep every entry. It is
    only a record: a damaged one is set aside with a warning, never failing the run that
    stored its cells."""
    with store.lock():
        try:
            runs = load_runs(store.root)
        except ConvergenceError as e:
            damaged = store.root / RUNS
            aside = damaged.with_name(f"{RUNS}.damaged-{time.time_ns()}")
            damaged.rename(aside)
            print(f"warning: {e}; set it aside as {aside.name} and started a new {RUNS}",
                  file=sys.stderr)
            runs = []
        store.write_json(RUNS, {"runs": [*runs, run]})


def load_runs(root: Path) -> list[dict]:
    """The call statistics of every run of a study (empty if none recorded)."""
    remedy = "it is only a record: delete it (`convergence run` starts a new one)"
    record = Store(root, read_only=True).read_json(RUNS, remedy)
    runs = record.get("runs", [])
    if not isinstance(runs, list):
        raise ConvergenceError(f"{Path(root) / RUNS} is damaged (its 'runs' is not a list); {remedy}")
    return runs


def _plain(cfg: Config) -> dict:
    from dataclasses import asdict
    return asdict(cfg)
