"""Every check of a study's configuration, before any work: unknown keys, names, seeds,
steps, shards, the row budget and the analysis' settings. Each failure is one
:class:`ConvergenceError` sentence naming the bad value and what is valid, so ``run``
refuses what ``analyze`` would refuse later."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import MISSING as MISSING_FACTORY
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from convergence.config.schema import AnalysisConfig, Config, ModelConfig
from convergence.core.errors import ConvergenceError
from convergence.core.registries import (
    EXACT_LIMITS,
    METRICS,
    MODELS,
    REFERENCES,
    SAMPLERS,
    SCHEDULES,
)
from convergence.core.registry import import_plugins


def to_config(cfg: DictConfig | dict) -> Config:
    """Hydra's DictConfig (or a plain dict, for tests) -> a validated Config.

    Imports the ``plugins`` first, then registers ``_target_`` samplers and schedules and
    replaces them by their names, so every later stage sees plain names."""
    raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    reject_unknown_keys(OmegaConf.to_container(raw, resolve=False), Config)
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


def validate_name(name: str) -> None:
    """A study name is one plain folder name (results go to <results_dir>/<name>/)."""
    if not name or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", name) or ".." in name:
        raise ConvergenceError(f"study name {name!r} must be a plain folder name: letters, digits "
                               "and _ . + - (no / or ..)")


def validate_name_overrides(overrides: list[str]) -> None:
    """Check ``name=...`` on the command line before Hydra creates folders named after it."""
    for o in overrides:
        m = re.fullmatch(r"[+~]{0,2}name=(.*)", o)
        if m and "," not in m.group(1):
            validate_name(m.group(1).strip("'\""))


def _check_seed(seed, where: str) -> None:
    if not 0 <= int(seed) <= MAX_SEED:
        raise ConvergenceError(f"{where} {seed} is out of range: seeds are integers from 0 to "
                               f"{MAX_SEED} (2**63 - 1)")
def reject_unknown_keys(node: Any, schema: type, where: str = "") -> None:
    """Unknown keys are an error naming the key and the close valid ones (Hydra lets
    ``+key=value`` add any key; a typo must not be silently ignored)."""
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
            reject_unknown_keys(value, sub, f"{where}{key}.")


def _load_plugins(cfg: Config) -> None:
    """Import the plugins, then register every ``_target_`` node (samplers, schedules,
    metrics, the model) and put its name in its place."""
    if cfg.plugins:
        import_plugins(cfg.plugins)
    cfg.samplers = [s if isinstance(s, str) else SAMPLERS.from_target(s) for s in cfg.samplers]
    cfg.analysis.metrics = [m if isinstance(m, str) else METRICS.from_target(m)
                            for m in cfg.analysis.metrics]
    if cfg.model._target_:
        name = cfg.model._target_ if cfg.model.name == ModelConfig.name else cfg.model.name
        cfg.model.name = MODELS.from_target({"_target_": cfg.model._target_, "name": name})
    cfg.schedules = [s if isinstance(s, str) else SCHEDULES.from_target(s) for s in cfg.schedules]
    if cfg.model.params and cfg.model.name in MODELS and \
            MODELS.entry(cfg.model.name).source == "builtin":
        raise ConvergenceError(f"model.params.{next(iter(cfg.model.params))}: the built-in model "
                               f"{cfg.model.name!r} takes no params; they are for a "
                               "model._target_ (docs/plugins.md, 'Your own model')")


def validate(cfg: Config) -> None:
    """Every check of the study's meaning (types were Hydra's)."""
    validate_name(cfg.name)
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
    parse_batch_size(cfg.batch_size)
    for label, v in (("width", cfg.width), ("height", cfg.height)):
        if v < 8 or v % 8:
            raise ConvergenceError(f"{label}={v} is not a positive multiple of 8")
    validate_dtype(cfg.model)
    validate_analysis(cfg.analysis)


#: model.dtype: what the model backends can compute in, by every name they accept
#: (models/device.py maps them to torch dtypes)
DTYPES = ("auto", "float32", "fp32", "float16", "fp16", "half", "bfloat16", "bf16", "float64",
          "fp64")


def validate_dtype(model: ModelConfig) -> None:
    """``model.dtype`` names a dtype the backends compute in, and the device named
    explicitly supports it (Apple MPS has no float64)."""
    dtype = str(model.dtype).strip().lower()
    if dtype not in DTYPES:
        raise ConvergenceError(f"model.dtype={model.dtype!r} is not supported; use one of: "
                               f"{', '.join(DTYPES)}")
    if dtype in ("float64", "fp64") and str(model.device).startswith("mps"):
        raise ConvergenceError(f"model.dtype={model.dtype} is not supported on Apple MPS "
                               f"(model.device={model.device}); use float32")


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None (no sharding) for None or ``""``."""
    if spec is None or str(spec).strip() == "":
        return None
    m = _SHARD.match(str(spec))
    if m is None:
        raise ConvergenceError(f"shard={spec!r} is not of the form i/n (e.g. shard=0/4 runs the "
                               "first of 4 shards)")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise ConvergenceError(f"shard={spec!r}: need n >= 1 and 0 <= i < n "
                               f"(shards of n={count} are 0/{count} .. {max(count - 1, 0)}/{count})")
    return index, count


def parse_batch_size(value) -> int | str:
    """``auto`` or a positive integer; anything else is a one-line error."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = None
    if n is None or n < 1 or (isinstance(value, float) and value != n) or isinstance(value, bool):
        raise ConvergenceError(f"batch_size must be 'auto' or an integer >= 1 (rows per model "
                               f"call), got {value!r}")
    return n


def validate_analysis(a: AnalysisConfig) -> None:
    """Reject analysis settings that cannot work, naming the value."""
    if a.on_missing not in ("error", "warn"):
        raise ConvergenceError(f"analysis.on_missing must be 'error' or 'warn', got {a.on_missing!r}")
    if a.metric in a.rate_metrics:
        raise ConvergenceError(f"analysis.metric={a.metric!r} is also in analysis.rate_metrics: "
                               "key points are measured on the displayed (clipped) sample, "
                               "rates on the unclipped floats; use different metrics")
    for key in ("metric", "indicative_metric", "indicative_fallback_metric", "converged_metric"):
        name = getattr(a, key)
        if not METRICS.get(name).lower_is_better:
            raise ConvergenceError(f"analysis.{key}={name!r} is a similarity (higher is better); "
                                   "key points need a distance: rel_rmse, rmse, mse, gmsd, "
                                   "lpips or visible")
    for key in ("indicative", "indicative_fallback", "converged", "coherent_noise",
                "coherent_clipped", "nonconvergence_change"):
        if not getattr(a, key) >= 0:
            raise ConvergenceError(f"analysis.{key}={getattr(a, key)!r}: a threshold must be a "
                                   "number >= 0")
    ref = a.reference
    if ref == "exact":
        raise ConvergenceError("analysis.reference=exact is ambiguous: use exact-denoised, "
                               "exact-zero or exact-end")
    for key, r in (("reference", ref), *(("references", r) for r in a.references)):
        if r not in (*EXACT_LIMITS, "exact") and "@" not in r and (r not in REFERENCES or (
                key == "reference" and r == "next")):
            raise ConvergenceError(f"unknown analysis.{key} {r!r}: use "
                                   f"{', '.join(REFERENCES.names())}, exact-denoised, exact-zero, "
                                   "exact-end or SAMPLER@STEPS")
    if ref in EXACT_LIMITS and "exact" not in a.references:
        raise ConvergenceError(f"analysis.reference={ref} needs 'exact' in analysis.references")
