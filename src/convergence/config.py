"""Structured configs (registered with Hydra's ConfigStore) and their validation.

Hydra checks types; :func:`validate` checks meaning and raises ConvergenceError with one
sentence naming the bad value.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING as MISSING_FACTORY
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from convergence.errors import ConvergenceError
from convergence.shard import parse_shard


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
    #: instead of a registered name: a factory ``fn(model_cfg, width, height) -> Model``
    #: (Hydra ``_target_``, docs/plugins.md), registered under ``name`` (default: this path)
    _target_: Optional[str] = None


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
    #: Thresholds are in units of the metric (rel_rmse: fractions of the reference's own
    #: std). indicative: distance to the reference at most this (0.1: on a picture of the
    #: default study's median contrast, std 0.55 in [-1, 1], that is ~7/255 RMS)
    indicative: float = 0.1
    #: converged: distance to the reference at most this (0.015: ~1 8-bit level, 2/255, at
    #: median contrast) ...
    converged: float = 0.015
    #: coherent: residual-noise estimate (relative to the image's own std) at most this ...
    coherent_noise: float = 0.4
    #: ... and change to the next swept step count at most this. Both calibrated on the
    #: analytic model's ground truth (docs/analysis.md: best balanced accuracy with the
    #: change bound still a small change, <= 0.4 of the picture's std)
    coherent_change: float = 0.4
    #: "does not converge" without deterministic samplers in the study: not converged,
    #: never settled, and the change between the two largest swept step counts at least this
    nonconvergence_change: float = 0.1
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


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="model", name="base_model", node=ModelConfig)


def to_config(cfg: DictConfig | dict) -> Config:
    """Hydra's DictConfig (or a plain dict, for tests) -> a validated Config.

    Imports the ``plugins`` first, then registers ``_target_`` samplers and schedules and
    replaces them by their names, so every later stage sees plain names."""
    raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    check_keys(OmegaConf.to_container(raw, resolve=False), Config)
    base = OmegaConf.structured(Config)
    merged = OmegaConf.merge(base, cfg)
    obj: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    _load_plugins(obj)
    validate(obj)
    return obj


#: seeds are stored as int64 and seed torch's generators: 0 <= seed < 2**63
MAX_SEED = 2**63 - 1
#: larger step counts are almost surely a typo (the dense benchmark sweeps 1..100)
MAX_STEPS = 10_000
#: classifier-free guidance scales in use are ~1..30; far beyond, images saturate
MAX_CFG = 100.0


def check_name(name: str) -> None:
    """A study name is one plain folder name (results go to <results_dir>/<name>/)."""
    if not name or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", name) or ".." in name:
        raise ConvergenceError(f"study name {name!r} must be a plain folder name: letters, digits "
                               "and _ . + - (no / or ..)")


def check_name_overrides(overrides: list[str]) -> None:
    """Check ``name=...`` on the command line before Hydra creates folders named after it."""
    for o in overrides:
        m = re.fullmatch(r"[+~]{0,2}name=(.*)", o)
        if m and "," not in m.group(1):
            check_name(m.group(1).strip("'\""))


def _check_seed(seed, where: str) -> None:
    if not 0 <= int(seed) <= MAX_SEED:
        raise ConvergenceError(f"{where} {seed} is out of range: seeds are integers from 0 to "
                               f"{MAX_SEED} (2**63 - 1)")
def check_keys(node: Any, schema: type, where: str = "") -> None:
    """Unknown keys are an error naming the key and the close valid ones (Hydra lets
    ``+key=value`` add any key; a typo must not be silently ignored)."""
    import difflib
    from dataclasses import fields, is_dataclass
    if not isinstance(node, dict):
        return
    known = {f.name: f for f in fields(schema)}
    for key, value in node.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(known)}"
            raise ConvergenceError(f"unknown config key {where + str(key)!r}; {hint}")
        sub = known[key].default_factory if known[key].default_factory is not MISSING_FACTORY else None
        if sub is not None and is_dataclass(sub):
            check_keys(value, sub, f"{where}{key}.")


def _load_plugins(cfg: Config) -> None:
    if cfg.plugins:
        from convergence.registry import import_plugins
        import_plugins(cfg.plugins)
    if any(not isinstance(s, str) for s in cfg.samplers):
        from convergence.samplers.registry import sampler_from_target
        cfg.samplers = [s if isinstance(s, str) else sampler_from_target(s) for s in cfg.samplers]
    if any(not isinstance(m, str) for m in cfg.analysis.metrics):
        from convergence.metrics import METRICS
        cfg.analysis.metrics = [m if isinstance(m, str) else METRICS.from_target(
            m, ("space", "lower_is_better", "description")) for m in cfg.analysis.metrics]
    if cfg.model._target_:
        from convergence.models import MODELS
        name = cfg.model._target_ if cfg.model.name == ModelConfig.name else cfg.model.name
        cfg.model.name = MODELS.from_target({"_target_": cfg.model._target_, "name": name})
    if any(not isinstance(s, str) for s in cfg.schedules):
        from convergence.samplers.schedules import canonical_schedule
        cfg.schedules = [s if isinstance(s, str) else canonical_schedule(s) for s in cfg.schedules]


def validate(cfg: Config) -> None:
    check_name(cfg.name)
    if not cfg.prompts:
        raise ConvergenceError("the sweep has no prompts (prompts=[] is empty)")
    for p in cfg.prompts:
        if not str(p.text).strip():
            raise ConvergenceError(f"prompt with topic {p.topic!r} has empty text")
    if cfg.seeds is not None and len(cfg.seeds) == 0:
        raise ConvergenceError("the sweep has no seeds (seeds=[] is empty); give at least one seed")
    for s in cfg.seeds or []:
        _check_seed(s, "seed")
    for p in cfg.prompts:
        if p.seed is not None:
            _check_seed(p.seed, f"the seed of prompt {p.text[:30]!r}:")
    if cfg.seeds is None:
        missing = [p.text for p in cfg.prompts if p.seed is None]
        if missing:
            raise ConvergenceError(f"no seeds given and prompt {missing[0]!r} has no seed of its own")
    if cfg.seeds_per_prompt < 1:
        raise ConvergenceError(f"seeds_per_prompt must be >= 1, got {cfg.seeds_per_prompt}")
    if not cfg.samplers:
        raise ConvergenceError("the sweep has no samplers (samplers=[] is empty)")
    if not cfg.steps:
        raise ConvergenceError("the sweep has no step counts (steps=[] is empty)")
    bad = [s for s in cfg.steps if s < 1]
    if bad:
        raise ConvergenceError(f"steps must be >= 1, got {bad[0]}")
    bad = [s for s in cfg.steps if s > MAX_STEPS]
    if bad:
        raise ConvergenceError(f"steps={bad[0]} is too many: step counts go from 1 to {MAX_STEPS}")
    if not cfg.cfg or any(c <= 0 for c in cfg.cfg):
        raise ConvergenceError(f"cfg scales must be > 0, got {list(cfg.cfg)}")
    bad = [c for c in cfg.cfg if not math.isfinite(c) or c > MAX_CFG]
    if bad:
        raise ConvergenceError(f"cfg scale {bad[0]} is not usable: cfg scales are finite numbers "
                               f"in (0, {MAX_CFG:g}]")
    if not cfg.claim_seconds > 0 or not math.isfinite(cfg.claim_seconds):
        raise ConvergenceError(f"claim_seconds must be a positive number, got {cfg.claim_seconds}")
    if not cfg.schedules:
        raise ConvergenceError("the sweep has no schedules (schedules=[] is empty)")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConvergenceError(f"threads must be >= 1 (or null), got {cfg.threads}")
    parse_shard(cfg.shard)
    if cfg.search not in ("grid", "adaptive"):
        raise ConvergenceError(f"search={cfg.search!r} is not a search; use grid or adaptive")
    if cfg.search_budget is not None and cfg.search_budget < 1:
        raise ConvergenceError(f"search_budget must be >= 1 (or null), got {cfg.search_budget}")
    from convergence.budget import parse_batch_size
    parse_batch_size(cfg.batch_size)
    for label, v in (("width", cfg.width), ("height", cfg.height)):
        if v < 8 or v % 8:
            raise ConvergenceError(f"{label}={v} is not a positive multiple of 8")
