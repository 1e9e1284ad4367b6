"""The analysis' tables: every column declared once, here, and checked on write and read.

Each stage (references, distances, key points, rates, claims, calibration) reads and writes
these tables only, so a stage can be re-run or tested alone and the report can rely on the
columns it reads. A column is (name, kind) with kind one of str, int, float, bool; ``int``
columns may hold NaN (a key point not reached) and are stored as floats by pandas.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from convergence.core.atomic import atomic_write_bytes
from convergence.core.errors import ConvergenceError

GROUP = ["model", "topic", "prompt", "seed", "sampler", "schedule", "cfg"]
CURVE = ["sampler", "schedule", "cfg"]

_CELL = [("hash", "str"), ("model", "str"), ("topic", "str"), ("prompt", "str"), ("seed", "int"),
         ("sampler", "str"), ("schedule", "str"), ("steps", "int"), ("cfg", "float"),
         ("nfe", "float"), ("seconds", "float")]

SCHEMAS: dict[str, list[tuple[str, str]]] = {
    # what the analysis needs of each stored cell (cells.parquet holds more)
    "cells": [*_CELL, ("model_hash", "str"), ("width", "int"), ("height", "int"),
              ("family", "str"), ("stochastic", "bool"), ("sigma_start", "float"),
              ("noise_scale", "float"), ("sigma_min", "float"), ("stops_above_zero", "bool"),
              # the range the image clips the sample to (+-inf: none); key points use it
              ("display_lo", "float"), ("display_hi", "float"),
              # the decoded float image's file ("": the sample is the picture, or a latent
              # cell stored before they were recorded; analysis/pictures.py)
              ("decoded", "str"),
              # the device it was generated on (analysis.device=auto scores there)
              ("device", "str")],
    "distances": [*_CELL, ("reference", "str"), ("ref_hash", "str"), ("metric", "str"),
                  ("value", "float")],
    # key points of one curve (one prompt x seed), before any aggregation
    "keypoints_seed": [("model", "str"), ("topic", "str"), ("prompt", "str"), ("seed", "int"),
                       ("sampler", "str"), ("schedule", "str"), ("cfg", "float"),
                       ("metric", "str"), ("reference", "str"), ("point", "str"),
                       ("steps", "int"), ("nfe", "float"), ("seconds", "float"),
                       ("does_not_converge", "bool"), ("settled", "bool"),
                       ("top_change", "float"), ("baseline_change", "float"),
                       ("tail_ratio", "float"),
                       # "adaptive": pinned to one step by search=adaptive; "grid": the sweep's
                       ("search", "str")],
    "keypoints": [("topic", "str"), ("sampler", "str"), ("schedule", "str"), ("cfg", "float"),
                  ("metric", "str"), ("reference", "str"), ("converges", "bool"),
                  ("status", "str"), ("point", "str"), ("steps", "int"), ("nfe", "float"),
                  ("seconds", "float"), ("threshold", "str"), ("n_seeds", "int"),
                  ("n_reached", "int"), ("steps_lo", "int"), ("steps_hi", "int"),
                  ("spread", "float"), ("n_settled", "int"), ("top_change", "float"),
                  ("baseline_change", "float"), ("tail_ratio", "float"),
                  # the median's interval over seeds (order statistics; NaN bound: above the
                  # sweep), its exact coverage, and the sweep's largest step (steps NaN with
                  # n_reached < n_seeds / 2 reads "> sweep_max")
                  ("ci_lo", "int"), ("ci_hi", "int"), ("ci_level", "float"),
                  ("sweep_max", "int"),
                  # adaptive / grid / mixed: which search found the seeds' points
                  ("search", "str")],
    "rates": [("level", "str"), ("topic", "str"), ("seed", "int"), ("sampler", "str"),
              ("schedule", "str"), ("cfg", "float"), ("x", "str"), ("reference", "str"),
              ("metric", "str"), ("a", "float"), ("b", "float"), ("b_lo", "float"),
              ("b_hi", "float"), ("n_seeds", "int"), ("x_lo", "float"), ("x_hi", "float"),
              ("slopes", "str"), ("asymptotic", "bool"), ("order_fit", "float"),
              ("order", "float"),
              # what b_lo/b_hi are (a bootstrap with >= 5 seeds, else the per-seed range of
              # the fits) and the slope tolerance the rule applied (rates.slope_tolerance)
              ("interval", "str"), ("tol", "float"),
              # each seed's own order beside the pooled curve's (seed: order or "-")
              ("seed_orders", "str")],
    "limits": [("sampler", "str"), ("schedule", "str"), ("cfg", "float"), ("metric", "str"),
               ("limit", "str"), ("steps", "int"), ("d_top", "float"), ("slopes", "str"),
               ("approached", "bool"), ("closest", "bool"), ("x_lo", "float"),
               ("x_hi", "float"), ("asymptotic", "bool"), ("order", "float"),
               ("order_lo", "float"), ("order_hi", "float"), ("interval", "str"),
               # rates.choose_limit: "closest" on the chosen row; "ambiguous" (not well
               # below the gaps between limits) or "none approached" on every row otherwise
               ("choice", "str")],
    "claims": [("claim", "str"), ("source", "str"), ("sampler", "str"), ("schedule", "str"),
               ("cfg", "float"), ("measurement", "str"), ("cells", "str"), ("anchor", "str"),
               ("value", "str"), ("verdict", "str"), ("details", "str"),
               # the comparison that decided the verdict (claims.combine): what against,
               # seeds (pairs) for and against the claim, ties, the test's p-value, and the
               # seeds a study would need to decide it with 80 % power at that split
               # (claims.seeds_needed; inf: an even split, NaN: no untied pair)
               ("against", "str"), ("n_for", "int"), ("n_against", "int"), ("n_ties", "int"),
               ("p_value", "float"), ("seeds_needed", "float")],
    "calibration": [("point", "str"), ("condition", "str"), ("truth", "str"), ("n", "int"),
                    ("positives", "int"), ("tp", "int"), ("fp", "int"), ("fn", "int"),
                    ("tn", "int"), ("balanced_accuracy", "float"), ("precision", "float"),
                    ("recall", "float")],
    # the points search=adaptive pinned (analysis/adaptive.py): per curve and point, the
    # keypoints_seed columns a sparse search defines, the bracket width in steps (1 = exact
    # to one step, 0 = the lowest step count), the curve's probes and what they cost
    "keypoints_adaptive": [*[(c, k) for c, k in _CELL if c in GROUP], ("metric", "str"),
                           ("reference", "str"), ("point", "str"), ("steps", "int"),
                           ("nfe", "float"), ("seconds", "float"), ("search", "str"),
                           ("known_to", "int"), ("probes", "int"), ("probe_steps", "int"),
                           ("probe_nfe", "float")],
}

FILES = {"distances": "distances.parquet", "keypoints_seed": "keypoints_seed.csv",
         "keypoints": "keypoints.csv", "rates": "rates.csv", "limits": "limits.csv",
         "claims": "claims.csv", "calibration": "calibration.csv",
         "keypoints_adaptive": "keypoints_adaptive.csv"}


def columns(name: str) -> list[str]:
    return [c for c, _ in SCHEMAS[name]]


def empty(name: str) -> pd.DataFrame:
    """A table with the schema's columns and no rows."""
    return conform(name, pd.DataFrame(columns=columns(name)))


def _coerce(s: pd.Series, kind: str) -> pd.Series:
    if kind == "str":
        return s.astype(object).where(s.notna(), "").astype(str)
    if kind == "bool":
        if s.dtype == object:
            s = s.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))
        return s.fillna(False).astype(bool)
    v = pd.to_numeric(s, errors="raise")
    return v.astype("float64") if kind == "float" or v.isna().any() else v.astype("int64")


def conform(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with exactly the schema's columns, in its order and kinds; a missing or
    extra column, or a value of the wrong kind, is an error naming the table and column
    (a stage that writes something else is a bug, a file that reads otherwise is stale)."""
    want = columns(name)
    missing = [c for c in want if c not in df.columns]
    extra = [c for c in df.columns if c not in want]
    if missing or extra:
        raise ConvergenceError(f"table {name!r}: missing columns {missing}, unexpected {extra}; "
                               "re-run `convergence analyze`")
    out = df[want].copy()
    for col, kind in SCHEMAS[name]:
        try:
            out[col] = _coerce(out[col], kind)
        except (ValueError, TypeError) as e:
            raise ConvergenceError(f"table {name!r}: column {col!r} is not {kind} ({e})") from None
    return out.reset_index(drop=True)


def write(root: Path, name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Check ``df`` against the schema and write it atomically; returns the checked table."""
    df = conform(name, df)
    path = Path(root) / FILES[name]
    if path.suffix == ".parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(path, buf.getvalue())
    else:
        atomic_write_bytes(path, df.to_csv(index=False).encode())
    return df


def read(root: Path, name: str) -> pd.DataFrame:
    """Read one analysis table and check it against the schema."""
    path = Path(root) / FILES[name]
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(
            path, keep_default_na=True, dtype={c: str for c, k in SCHEMAS[name] if k == "str"})
    except FileNotFoundError:
        raise ConvergenceError(f"{path} not found: run `convergence analyze` first") from None
    except Exception as e:  # pyarrow/pandas raise several types for a damaged file
        raise ConvergenceError(f"cannot read {path} ({type(e).__name__}); "
                               "re-run `convergence analyze`") from None
    return conform(name, df)
