"""The structured configs Hydra composes (registered with its ConfigStore): every key a
study, a model, the analysis and the report can set, with the default and why. Hydra
checks types; :mod:`convergence.config.validate` checks meaning."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class PromptConfig:
    text: str = MISSING
    #: topic label (analytic model: picks the mixture weights; everywhere: groups results)
    topic: str = MISSING
    #: the prompt's own seed (the guide gives one per prompt)
    seed: Optional[int] = None


@dataclass
class ModelConfig:
    #: registry name: "analytic" (embedded, default) or "diffusers" (or a plugin's)
    name: str = "analytic"
    #: hub id or local folder (diffusers)
    path: Optional[str] = None
    #: "auto" picks cuda, then mps, then cpu
    device: str = "auto"
    #: "auto" = fp16 on CUDA, fp32 elsewhere; or float32 / float16 / bfloat16
    dtype: str = "auto"
    variant: Optional[str] = None
    #: load .bin/.ckpt pickles (unsafe); safetensors only by default
    allow_pickle: bool = False
    local_files_only: bool = True
    attention_slicing: bool = False
    vae_tiling: bool = False
    #: for diffusers models: use the k-diffusion sampler ("k-diffusion") or the diffusers
    #: scheduler ("diffusers") when a sampler name exists in both
    sampler_backend: str = "k-diffusion"
    #: compiled model calls (torch.compile; CUDA graphs on CUDA) on row buckets; off until
    #: a GPU measurement shows a gain (docs/batching.md)
    compile: bool = False
    #: instead of a registered name (Hydra ``_target_``, docs/plugins.md): a denoiser
    #: ``D(x, sigma, **cond)``, a factory of one called with ``params``, or a factory
    #: ``fn(model_cfg, width, height) -> Model``; named ``name`` (default: this path)
    _target_: Optional[str] = None
    #: the settings of a ``_target_`` factory (free-form, checked by the factory), and what
    #: the harness reads of a denoiser: sigma_min, sigma_max, channels, display_range
    #: ([lo, hi] or derive), conditioning (module:function; null = unconditional)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class AnalysisConfig:
    """Thresholds and choices of the analysis; rationale in docs/analysis.md."""

    #: metric of the key points: rel_rmse = rmse of the model-space floats divided by the
    #: reference's own std (independent of brightness and contrast; docs/analysis.md)
    metric: str = "rel_rmse"
    #: metrics written to distances.parquet ("lpips" only when its weights are cached;
    #: "flip" and "haarpsi" are opt-in: flip is one library call per pair, ~8 ms each at
    #: 64x64 on one core; haarpsi costs as much as all other metrics together);
    #: names, or ``{_target_: pkg.fn, name: ..., space: sample|image}`` nodes (docs/plugins.md)
    #: the key points' own metrics (indicative_metric, converged_metric) are always computed
    metrics: list[Any] = field(default_factory=lambda: ["rel_rmse", "rmse", "mse", "psnr", "ssim",
                                                        "gmsd"])
    #: references: "highest" (group's highest steps), "SAMPLER@STEPS" (cross-sampler),
    #: "exact" (analytic model: exact-denoised, exact-zero, exact-end limits; skipped with a
    #: one-line note on models without an exact solution). Exact limits are what rates and
    #: "which limit" are measured against; "highest" is what the key points use.
    #: "heun@max" tests "DDIM and PLMS tend towards the K-samplers" (a note if heun is absent)
    references: list[str] = field(default_factory=lambda: ["highest", "exact", "heun@max"])
    #: the reference the key points are measured against
    reference: str = "highest"
    #: image metrics (psnr, ssim, haarpsi, gmsd, flip, lpips) are computed against these
    #: references only (FLIP costs ~30 ms a pair on a CPU); model-space metrics against all
    image_references: list[str] = field(default_factory=lambda: ["highest"])
    #: Key points (docs/analysis.md "Definitions"): each point has its own measure, and each
    #: threshold was chosen on a calibration split of the analytic model's ground truth and
    #: scored on held-out seeds and prompts (benchmarks/keypoint_truth.py, its record in
    #: results/measured/keypoint_truth.csv). indicative: the picture shows the final
    #: picture's content: perceptual distance to the reference at most ``indicative``
    indicative_metric: str = "lpips"
    indicative: float = 0.3166
    #: without LPIPS weights (README "LPIPS offline"): this metric and threshold instead,
    #: calibrated the same way (one note says so)
    indicative_fallback_metric: str = "rel_rmse"
    indicative_fallback: float = 1.106
    #: converged: no visible change any more, on an absolute display scale: the fraction of
    #: pixels more than one 8-bit level from the reference at most ``converged``
    converged_metric: str = "visible"
    converged: float = 0.003667
    #: coherent: clean and plausible by itself, whatever the reference: residual noise in
    #: 8-bit levels (absolute, not relative to the picture's contrast) at most
    #: ``coherent_noise`` and a fraction of clipped values at most ``coherent_clipped``
    coherent_noise: float = 21.62
    coherent_clipped: float = 0.7851
    #: "does not converge" without deterministic samplers in the study: not converged,
    #: never settled, and the change between the two largest swept step counts (in
    #: ``converged_metric`` units) at least this
    nonconvergence_change: float = 0.5
    #: ground truth of coherence on the analytic model: Mahalanobis/d to the nearest
    #: component at most this (a clean sample scores ~1, sigma_min-level grain ~3) ...
    truth_mahalanobis: float = 4.0
    #: ... and one picture holds at least this posterior mass at sigma_min (not a blend)
    truth_responsibility: float = 0.99
    #: rates: metrics fitted, smallest step count used, bootstrap resamples over seeds
    #: (rmse, not rel_rmse: one physical scale for every seed, so the median over seeds whose
    #: local slopes decide "asymptotic" and "which limit" is not dominated by low-contrast
    #: pictures; per curve the two differ by a constant factor and give the same order)
    rate_metrics: list[str] = field(default_factory=lambda: ["rmse"])
    #: (20: at CFG 7.5 heun, dpm_2 and plms are unstable below ~20 steps on the analytic
    #: model, distances of 1e1..1e3: outside the asymptotic range a rate describes)
    rate_min_steps: int = 20
    bootstrap: int = 100
    #: relative/absolute tolerance of the exact ODE solves
    exact_rtol: float = 1e-10
    #: where the torch-based metrics (ssim, gmsd, haarpsi, lpips, noise) run: "auto" = the
    #: device the study's cells were generated on when it is present here, else the CPU;
    #: or cpu, cuda, cuda:N, mps
    device: str = "auto"
    #: the claim "poor at <= N steps"
    few_steps: int = 8
    #: planned cells missing from the store: "error" (exit 2) or "warn" (analyse the rest)
    on_missing: str = "error"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportConfig:
    """What `convergence report` draws (see docs/report.md)."""

    #: wider sweeps are split into several grid tiles (a page-width PNG stays readable)
    max_grid_columns: int = 12
    #: taller sweeps (many samplers) are split likewise
    max_grid_rows: int = 16
    #: grid cell size in pixels: larger images are downscaled, smaller ones enlarged by
    #: whole pixels only (64 px -> 128 px)
    thumbnail: int = 128
    #: longest side of the viewer's images (report/cells/): larger images are scaled
    #: down to it once, smaller ones are linked as stored
    viewer_size: int = 256
    #: frame the indicative / coherent / converged cells on the grids
    mark_keypoints: bool = True
    #: distance drawn and tabulated; null = the analysis' metric
    metric: Optional[str] = None
    #: batch workflow: N candidates at the indicative step, k refined to convergence
    batch_candidates: int = 100
    batch_refined: int = 3
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    #: study name: results go to <results_dir>/<name>/
    name: str = "default"
    description: str = ""
    prompts: list[PromptConfig] = field(default_factory=list)
    #: seeds for every prompt; null = each prompt's own seed, + (seeds_per_prompt - 1) more
    seeds: Optional[list[int]] = None
    seeds_per_prompt: int = 1
    #: sampler names (any spelling `convergence samplers` lists) or Hydra nodes
    #: ``{_target_: pkg.module.fn, name: ..., order: ..., **options}`` (docs/plugins.md)
    samplers: list[Any] = field(default_factory=list)
    #: schedules axis; "native" = each sampler's home schedule; names or ``_target_`` nodes
    schedules: list[Any] = field(default_factory=lambda: ["native"])
    #: modules imported before anything else: they register samplers, schedules, metrics,
    #: models (docs/plugins.md)
    plugins: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    cfg: list[float] = field(default_factory=lambda: [7.5])
    width: int = 64
    height: int = 64
    #: rows per model call (CFG rows included) that the runner gathers from all cells
    #: running side by side; "auto" sizes it from free device memory (docs/batching.md)
    batch_size: Any = "auto"
    #: extra keyword options passed to samplers (e.g. rtol for dpm_adaptive)
    sampler_options: dict[str, Any] = field(default_factory=dict)
    results_dir: str = "results"
    progress: bool = True
    #: CPU threads for torch (null = torch's default, one per core); 1 helps on a shared,
    #: oversubscribed machine, where small matrix products lose more to contention than
    #: they gain from threads
    threads: Optional[int] = None
    #: writers sharing a study claim cells before computing them; a claim not renewed for
    #: this many seconds (its writer frozen, or dead on another host) lapses. Live writers
    #: renew every claim_seconds / 4; a dead writer on the same host lapses at once
    claim_seconds: float = 120.0
    #: run only shard i of n ("i/n", cells split by hash; null = all cells): one launcher
    #: job per shard, all writing into one study folder (docs/scale.md)
    shard: Optional[str] = None
    #: "grid": run every swept step count; "adaptive": the steps are a coarse sweep, then
    #: each key point is bisected to one step per curve (docs/scale.md)
    search: str = "grid"
    #: adaptive search: at most this many sampler steps per curve, coarse sweep included
    #: (null = until every key point is known to one step)
    search_budget: Optional[int] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def study_dir(self) -> Path:
        """Where the study's store, tables and report live: ``<results_dir>/<name>``."""
        return Path(self.results_dir) / self.name


def structured(schema: type) -> DictConfig:
    """``schema`` (Config or ModelConfig) as the node Hydra composes on, with
    ``model.params`` open: ``model.params.KEY=VALUE`` adds a key (a user factory's own
    settings, checked by that factory) without Hydra's ``+``."""
    node = OmegaConf.structured(schema)
    OmegaConf.set_struct(node.params if schema is ModelConfig else node.model.params, False)
    return node
