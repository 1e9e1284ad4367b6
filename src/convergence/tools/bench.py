"""``convergence bench``: how close a study runs to the device's floor, as ratios of one run.

On the device present it measures, for the configured model and study:

- **floor**: the best per-row cost of a bare model call over batch sizes;
- **harness**: ``convergence run`` of the study (cross-cell batching, store included),
  total and per model row, with its model calls and rows per call;
- **per-cell loop**: the same cells one at a time (each cell's own calls);
- **direct loop**: the same batches through the sampler functions called directly
  (k-diffusion's own functions where the sampler is one), without the harness;
- for diffusers models, a loop of ``StableDiffusionPipeline`` calls at batch 1.

and prints harness/floor, loop/harness and harness/direct with the device name and the
library versions. ``--quick`` times the loops on a sample of the cells and scales them by
NFE (said so in the output).
"""

from __future__ import annotations

import functools
import math
import os
import platform
import tempfile
import time
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version

import torch

from convergence.config.schema import Config
from convergence.core.allocator import keep_freed_memory
from convergence.core.errors import ConvergenceError
from convergence.models import build_model
from convergence.models.base import GuidedDenoiser, Model
from convergence.models.device import device_name
from convergence.run.budget import row_budget
from convergence.run.plan import Cell, batches, expand, rows_per_cell
from convergence.run.runner import load_runs, run_study, sample_batch
from convergence.samplers.noise import CellNoise
from convergence.samplers.spec import SamplingContext, resolve_sampler

LIBRARIES = ("torch", "k-diffusion", "diffusers", "numpy", "transformers")


def versions() -> str:
    out = [f"python {platform.python_version()}"]
    for lib in LIBRARIES:
        try:
            out.append(f"{lib} {version(lib)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def _sync(model: Model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


#: what the timings read: wall time, or (``--clock cpu``, CPU devices) the process's CPU
#: time, which a machine shared with other jobs disturbs far less than the wall clock
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def _timed(fn, model: Model) -> float:
    _sync(model)
    start = _clock()
    fn()
    _sync(model)
    return _clock() - start


def floor(model: Model, cells: list[Cell], max_rows: int, repeats: int = 3) -> list[tuple[int, float]]:
    """(rows, best seconds per row) of bare ``model.denoise`` calls at 1, 2, 4, ... rows.

    The call the runner makes (no gathering, compiling off): the same dtypes, a prompt's
    conditioning per row and a noise level per row, spread over the model's range as the
    rows of a gathered call are (a UNet then sees a timestep per row)."""
    first = cells[0]
    out = []
    n = 1
    while True:
        rows = min(n, max_rows)
        picked = [cells[i % len(cells)] for i in range(rows)]
        x = model.initial_noise([c.seed for c in picked], first.width, first.height)
        sigma = torch.logspace(math.log10(model.sigma_min), math.log10(model.sigma_max), rows,
                               dtype=torch.float64).to(model.device, model.sample_dtype)
        cond = model.encode_prompts([c.prompt for c in picked], [c.topic for c in picked]).cond
        with torch.no_grad():
            model.denoise(x, sigma, cond)  # warm-up
            call = functools.partial(model.denoise, x, sigma, cond)
            best = min(_timed(call, model) for _ in range(repeats))
        out.append((rows, best / rows))
        if rows >= max_rows:
            return out
        n *= 2


def _direct_fn(spec):
    """k-diffusion's own sampler function when the sampler is one, else ``None``."""
    fn = spec.function()
    return fn if getattr(fn, "__module__", "") == "k_diffusion.sampling" else None


def direct_batch(model: Model, batch: list[Cell], options: dict) -> None:
    """One batch through the sampler function called directly: no gathering, counting,
    NaN checks or store (k-diffusion's default noise for its stochastic samplers)."""
    first = batch[0]
    spec = resolve_sampler(first.sampler).spec
    sigma_dtype = torch.float32 if model.dtype in (torch.float16, torch.bfloat16) else model.dtype
    sigmas = spec.sigmas(model, first.schedule, first.steps).to(model.device, sigma_dtype)
    seeds = [c.seed for c in batch]
    with torch.no_grad():
        x = model.initial_noise(seeds, first.width, first.height) * sigmas[0].to(model.dtype)
        cond = model.encode_prompts([c.prompt for c in batch], [c.topic for c in batch])
        extra = {"conditioning": cond, "cfg_scale": first.cfg}
        kfn = _direct_fn(spec)
        if kfn is not None:
            out = kfn(GuidedDenoiser(model), x, sigmas, extra_args=extra, disable=True)
        else:
            ctx = SamplingContext(noise=CellNoise(seeds), steps=first.steps,
                                  alphas_cumprod=model.alphas_cumprod, options=dict(options),
                                  scheduler_config=getattr(model, "scheduler_config", None))
            out = spec.fn(GuidedDenoiser(model), x, sigmas, extra, ctx)
        model.decode(out)


def _sample(cells: list, n: int | None) -> list:
    if n is None or n >= len(cells):
        return cells
    step = len(cells) / n
    return [cells[int(i * step)] for i in range(n)]


def pipeline_loop(model: Model, cells: list[Cell]) -> float | None:
    """Seconds per CFG step of ``StableDiffusionPipeline`` calls at batch 1 (diffusers
    models only), measured on ``cells`` with the Euler scheduler."""
    pipe = getattr(model, "pipe", None)
    if pipe is None:
        return None
    from diffusers import EulerDiscreteScheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    steps = 0
    seconds = 0.0
    for c in cells:
        gen = torch.Generator("cpu").manual_seed(c.seed)
        seconds += _timed(lambda c=c, gen=gen: pipe(
            c.prompt, num_inference_steps=c.steps, guidance_scale=c.cfg, height=c.height,
            width=c.width, generator=gen), model)
        steps += c.steps
    return seconds / steps


def bench(cfg: Config, model: Model | None = None, loop_cells: int | None = None,
          repeats: int = 3, clock: str = "wall") -> list[str]:
    """Measure and return the report lines (see the module docstring)."""
    global _clock
    keep_freed_memory()  # as run_study does, so the floor and the harness allocate alike
    model = model or build_model(cfg.model, cfg.width, cfg.height)
    if clock not in CLOCKS or (clock == "cpu" and model.device.type != "cpu"):
        raise ConvergenceError(f"--clock {clock!r}: use wall, or cpu on a CPU device")
    _clock = CLOCKS[clock]
    cells = expand(cfg, model.name, model.fingerprint())
    budget = row_budget(cfg.batch_size, model, cfg.width, cfg.height)
    lines = [f"# convergence bench: study {cfg.name}, model {model.name}, {cfg.width}x{cfg.height}, "
             f"{len(cells)} cells, batch_size={cfg.batch_size} -> {budget} rows per call",
             f"# device: {device_name(model.device)}, {torch.get_num_threads()} torch thread(s) "
             f"({model.device}, {model.dtype})",
             f"# versions: {versions()}",
             f"# clock: {clock} seconds; load average {os.getloadavg()[0]:.1f} at the start"]
    floor_rows = floor(model, cells, max(budget, 1), repeats)
    best_rows, best = min(floor_rows, key=lambda r: r[1])
    lines.append(f"floor (bare model call, best of {repeats}): "
                 + ", ".join(f"{r} rows {1e3 * s:.3f} ms/row" for r, s in floor_rows))

    with tempfile.TemporaryDirectory(prefix="convergence-bench-") as tmp:
        run_cfg = replace(cfg, results_dir=tmp, progress=False)
        box: list = []
        harness = _timed(lambda: box.append(run_study(run_cfg, model)), model)
        summary = box[0]
        run = load_runs(summary.store.root)[-1]
        nfe = summary.store.load().set_index("hash")["nfe"].to_dict()
    rows = run["model_rows"]
    per_row = harness / rows
    lines.append(f"harness: {harness:.2f} s for {rows} model rows = {1e3 * per_row:.3f} ms/row; "
                 f"{run['model_calls']} model calls, {run['rows_per_call']:.1f} rows per call, "
                 f"{100 * run['model_share']:.0f}% of the time in the model, "
                 f"{100 * run['wait_seconds'] / run['seconds']:.0f}% waiting for the samplers")

    def work(cs: list[Cell]) -> int:
        return sum(nfe[c.hash] * rows_per_cell(c) for c in cs)

    timed = _sample(cells, loop_cells)
    loop = sum(_timed(lambda c=c: sample_batch(model, [c], cfg.sampler_options), model)
               for c in timed) * work(cells) / work(timed)
    plan = batches(cells, budget)
    timed_plan = _sample(plan, None if loop_cells is None else max(1, loop_cells * len(plan) // len(cells)))
    direct = sum(_timed(lambda b=b: direct_batch(model, b, cfg.sampler_options), model)
                 for b in timed_plan) * work(cells) / work([c for b in timed_plan for c in b])
    if loop_cells is not None and loop_cells < len(cells):
        lines.append(f"(loops timed on {len(timed)} of {len(cells)} cells and {len(timed_plan)} "
                     f"of {len(plan)} batches, scaled by model rows)")
    lines.append(f"per-cell loop: {loop:.2f} s")
    lines.append(f"direct loop (sampler functions called directly, k-diffusion's where the "
                 f"sampler is one, the same batches of <= {budget} rows, no gathering, no "
                 f"store): {direct:.2f} s")
    pipe_step = pipeline_loop(model, _sample(cells, min(len(cells), 3)))
    lines += [
        f"harness/floor = {best / per_row:.2f}  (floor {1e3 * best:.3f} ms/row at {best_rows} rows)",
        f"loop/harness = {loop / harness:.2f}  (cross-cell batching vs one cell at a time)",
        f"harness/direct = {direct / harness:.2f}  (>= 1: the harness is as fast as calling the "
        f"samplers directly)",
    ]
    if pipe_step is not None:
        cfg_steps = sum(nfe[c.hash] for c in cells)
        lines.append(f"pipeline loop (StableDiffusionPipeline, batch 1, Euler): "
                     f"{1e3 * pipe_step:.1f} ms per CFG step -> {pipe_step * cfg_steps:.1f} s for "
                     f"the study's {cfg_steps} NFE; pipeline/harness = "
                     f"{pipe_step * cfg_steps / harness:.2f}")
    return lines


def bench_report(cfg: Config, argv: list[str], loop_cells: int | None = None,
                 repeats: int = 3, clock: str = "wall") -> str:
    """``convergence bench``'s report: the command line, then :func:`bench`'s lines."""
    lines = bench(cfg, loop_cells=loop_cells, repeats=repeats, clock=clock)
    return "\n".join([f"$ convergence bench {' '.join(argv)}", *lines])
