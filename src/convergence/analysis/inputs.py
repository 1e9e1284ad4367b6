"""What the analysis reads: the cells that are in the store, not a re-plan of the config.

A study extended on the command line (``convergence run steps=[...,200]``) is analysed whole
by a plain ``convergence analyze``; a config that asks for cells the store lacks is named in
one line. Each stored row carries what later stages need (sampler family, stochastic or not,
the schedule's sigma span, the model fingerprint hash), so no stage imports the samplers or
builds a model for metadata. Rows stored before those columns existed are filled once, here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from convergence.analysis import tables as T
from convergence.config.schema import Config, ModelConfig
from convergence.core.errors import ConvergenceError
from convergence.core.store import Store
from convergence.models import build_model
from convergence.run.plan import expand, fingerprint_hash
from convergence.run.runner import cell_metadata

#: per-cell metadata the runner records (convergence.run.runner.cell_metadata)
META_COLUMNS = ("family", "stochastic", "sigma_start", "noise_scale", "sigma_min",
                "stops_above_zero", "display_lo", "display_hi")


def study_model_hash(root: Path) -> str | None:
    """The fingerprint hash of the model of the study's last run (study.json), if known."""
    fp = Store(root, read_only=True).read_json("study.json").get("model")
    if not fp:
        return None
    return fingerprint_hash(fp)


def _fill_metadata(df: pd.DataFrame, model_cfg: ModelConfig) -> pd.DataFrame:
    """Metadata of rows stored by an older runner, from the registry and the configured
    model (a real model's pipeline is loaded from its ``model.path``; imported only then)."""
    todo = [c for c in META_COLUMNS if c not in df.columns or df[c].isna().any()]
    if not todo:
        return df
    df = df.copy()
    models: dict[tuple, object] = {}
    for c in META_COLUMNS:
        if c not in df.columns:
            df[c] = None
    for i, r in df[df[list(META_COLUMNS)].isna().any(axis=1)].iterrows():
        key = (int(r.width), int(r.height))
        if key not in models:
            models[key] = build_model(model_cfg, *key)
        for k, v in cell_metadata(models[key], r.sampler, r.schedule, int(r.steps)).items():
            df.at[i, k] = v
    return df


def load_cells(cfg: Config) -> tuple[Store, pd.DataFrame]:
    """The stored cells of the study (of its current model version) with their files."""
    store = Store(cfg.study_dir())
    df = store.load()
    if df.empty:
        raise ConvergenceError(f"no cells stored in {store.root}; run `convergence run` first")
    mh = study_model_hash(store.root)
    if mh is not None and (df.model_hash == mh).any():
        df = df[df.model_hash == mh]
    elif df.model_hash.nunique() > 1:
        raise ConvergenceError(f"{store.root} holds cells of {df.model_hash.nunique()} model "
                               "versions and no study.json says which is current; run "
                               "`convergence run` once to record it")
    have = df.hash.isin(store.done_hashes())  # damaged or missing files: a missing cell
    if not have.all():
        bad = str(df.hash[~have].iloc[0])
        print(f"warning: {int((~have).sum())} stored cells are damaged and left out (e.g. "
              f"{store.describe(bad)}: {store.damaged.get(bad)}); `convergence run` recomputes them")
        df = df[have]
        if df.empty:
            raise ConvergenceError(f"every stored cell in {store.root} is damaged (e.g. "
                                   f"{store.describe(bad)}: {store.damaged.get(bad)}); "
                                   "`convergence run` recomputes them")
    model = str(df.model.iloc[0])
    df = _fill_metadata(df.reset_index(drop=True),
                        cfg.model if cfg.model.name == model else ModelConfig(name=model))
    if "decoded" not in df:  # stored before decoded images were recorded
        df = df.assign(decoded="")
    if "device" not in df:  # stored before the device was recorded: the CPU
        df = df.assign(device="cpu")
    _check_config(cfg, df, store)
    return store, T.conform("cells", df[T.columns("cells")])


def _check_config(cfg: Config, df: pd.DataFrame, store: Store) -> None:
    """One line when the config asks for cells the store lacks (error or warning)."""
    key = ["topic", "prompt", "seed", "sampler", "schedule", "steps", "cfg", "width", "height"]
    stored = set(map(tuple, df[key].astype(str).to_numpy()))
    planned = expand(cfg, str(df.model.iloc[0]), {})
    missing = [c for c in planned
               if tuple(str(getattr(c, k)) for k in key) not in stored]
    if not missing:
        return
    ex = "; ".join(f"{c.sampler}/{c.schedule}/{c.steps} steps/seed {c.seed}/{c.topic}"
                   for c in missing[:3])
    msg = (f"{len(missing)} of the {len(planned)} cells the config asks for are missing from "
           f"{store.root} (e.g. {ex})")
    if cfg.analysis.on_missing == "warn":
        warnings.warn(msg + f"; analysing the {len(df)} stored cells", stacklevel=2)
        print(f"warning: {msg}; analysing the {len(df)} stored cells")
        return
    raise ConvergenceError(msg + "; run `convergence run` with the same overrides, or set "
                           "analysis.on_missing=warn to analyse what is stored")
