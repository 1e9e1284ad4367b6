"""Load one study's stored results (run + analysis) for the report and the notebook.

The report is a pure reader: it never re-runs cells or the analysis, so it is cheap to
re-render and cannot disagree with the files it points at. Missing analysis outputs are
an error that names the command to run; every table is checked against its schema
(analysis/tables.py) before any page is written, so a damaged or edited one is an error
naming the file, not a page drawn from garbage.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from convergence.analysis import tables
from convergence.core.errors import ConvergenceError
from convergence.core.store import Store

#: the analysis files the report needs, and the optional ones it shows when present
REQUIRED = ("distances.parquet", "keypoints.csv")
OPTIONAL = ("rates.csv", "claims.csv", "keypoints_seed.csv")
POINTS = ("indicative", "coherent", "converged")


@dataclass
class StudyData:
    """Everything the report draws, loaded once."""

    root: Path
    cells: pd.DataFrame
    distances: pd.DataFrame
    keypoints: pd.DataFrame
    rates: pd.DataFrame | None
    claims: pd.DataFrame | None
    study: dict = field(default_factory=dict)
    metric: str = "rmse"
    #: analysis files older than cells.parquet (the store grew after `analyze`)
    stale: list[str] = field(default_factory=list)
    #: things a reader should know about what was left out
    notes: list[str] = field(default_factory=list)
    #: key points of each seed's curve (keypoints_seed.csv; None from an older analysis)
    keypoints_seed: pd.DataFrame | None = None

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def reference(self) -> str:
        """The reference the key points were measured against (distances has others too:
        "next" step count, exact limits, ...)."""
        for df in (self.keypoints, self.distances):
            if "reference" in df and df["reference"].notna().any():
                refs = df["reference"].dropna().astype(str)
                if df is self.distances and "highest" in set(refs):
                    return "highest"
                return str(refs.iloc[0])
        return str(self.study.get("config", {}).get("analysis", {}).get("reference", "highest"))

    @property
    def samplers(self) -> list[str]:
        """Samplers in the order the study lists them (the guide's row order).

        The runner stores cells in plan order, so first appearance in cells.parquet is the
        configured order, without importing the sampler registry (k-diffusion is slow)."""
        return list(dict.fromkeys(self.cells["sampler"]))

    @property
    def topics(self) -> list[str]:
        """Topics in the order of the study's prompts."""
        configured = [p.get("topic") for p in self.study.get("config", {}).get("prompts", [])]
        return order_like(self.cells["topic"].unique(), configured)

    def non_converging(self, topic: str | None = None) -> set[str]:
        """Samplers the analysis found not to converge: in ``topic``, or (None) in every
        topic (ancestral / SDE samplers)."""
        kp = self.keypoints
        if kp.empty or "converges" not in kp:
            return set()
        kp = kp[kp["point"] == "converged"]
        if topic == "all" and not (kp["topic"] == "all").any():
            topic = None  # no all-topics row: never converges in any topic
        if topic is not None:
            kp = kp[kp["topic"] == topic]
        no = kp["converges"].astype(str).str.lower().isin(["false", "0", "0.0"])
        return set(kp.loc[no, "sampler"]) - set(kp.loc[~no, "sampler"])


def order_like(values, preferred: list) -> list:
    """``values`` ordered by their position in ``preferred`` (unknown ones last, sorted)."""
    values = list(dict.fromkeys(values))
    rank = {v: i for i, v in enumerate(dict.fromkeys(preferred))}
    return sorted(values, key=lambda v: (rank.get(v, len(rank)), str(v)))


def _read(root: Path, name: str) -> pd.DataFrame:
    """One analysis table, checked against its schema; the error names the file."""
    try:
        return tables.read(root, name.split(".")[0])
    except ConvergenceError as e:
        text = str(e)
        where = "" if str(root / name) in text else f"{root / name}: "
        raise ConvergenceError(f"{where}{text}") from None


def load_study(root: Path | str, metric: str | None = None) -> StudyData:
    """Read ``root`` (results/<study>/): cells plus the analysis outputs.

    ``metric`` picks the distance drawn in curves; by default the analysis' own metric
    (study.json), else the first metric in keypoints.csv."""
    root = Path(root)
    store = Store(root)
    if not store.exists():
        raise ConvergenceError(f"no results in {root}: run `convergence run` first")
    missing = [n for n in REQUIRED if not (root / n).exists()]
    if missing:
        raise ConvergenceError(f"{root} has no {', '.join(missing)}: run `convergence analyze` first")
    cells = store.load()
    intact = store.done_hashes()
    damaged = cells[~cells["hash"].isin(intact)]
    study = store.read_json("study.json")
    distances = _read(root, "distances.parquet")
    keypoints = _read(root, "keypoints.csv")
    optional = {n: _read(root, n) if (root / n).exists() else None for n in OPTIONAL}
    if metric is None:  # the analysis' curve metric (each key point has its own)
        metric = study.get("config", {}).get("analysis", {}).get("metric")
    known = set(keypoints.get("metric", pd.Series(dtype=str)).dropna()) | set(
        distances.get("metric", pd.Series(dtype=str)).dropna())
    if metric not in known and known:
        metric = sorted(known)[0] if keypoints.empty else str(keypoints["metric"].iloc[0])
    notes = []
    if "model_hash" in cells and cells["model_hash"].nunique() > 1 and "hash" in distances:
        # the store keeps every model version's cells; show the ones the analysis scored
        used = cells["hash"].isin(set(distances["hash"]))
        if used.any():
            notes.append(f"the store also holds {int((~used).sum())} cells of other model "
                         f"versions or sweeps; this report shows the {int(used.sum())} cells "
                         "the analysis scored")
            cells = cells[used].reset_index(drop=True)
    if len(damaged):
        h = damaged["hash"].iloc[0]
        notes.append(f"{len(damaged)} damaged cells are left out (e.g. {store.describe(h)}: "
                     f"{store.damaged[h]}); `convergence run` recomputes them")
        print(f"warning: {notes[-1]}", file=sys.stderr)
        cells = cells[cells["hash"].isin(intact)].reset_index(drop=True)
    changed = store.changed_at()
    stale = [n for n in (*REQUIRED, *OPTIONAL)
             if (root / n).exists() and (root / n).stat().st_mtime < changed]
    return StudyData(root, cells, distances, keypoints, optional["rates.csv"],
                     optional["claims.csv"], study, metric or "rmse", stale, notes,
                     optional["keypoints_seed.csv"])
