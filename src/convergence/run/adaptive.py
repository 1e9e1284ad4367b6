"""Adaptive key-point search (``search=adaptive``), its running part: spend steps only
where a key point is being decided.

A dense sweep of every step count from ``min(steps)`` to ``max(steps)`` finds each key point
exactly, at a cost that grows with the square of the range. The adaptive search runs the
study's own ``steps`` as a coarse sweep, then, per curve (model × prompt × seed × sampler ×
schedule × cfg), bisects over integer step counts between the last coarse step where a key
point's condition fails and the first from which it holds, until every point is known to
one step (or the curve's step budget ``search_budget`` is spent).

This module runs the probes: every probe is an ordinary cell, run by the ordinary runner
into the study's store. What a probe measures, where the next probes go and the table of
points found are the analysis' (:class:`convergence.analysis.adaptive.KeyPointJudge`),
handed in as a :class:`Judge`: the search only knows how to run what it is asked for.
benchmarks/adaptive.py compares the points with a dense sweep of every step count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from convergence.config.schema import Config
from convergence.core.errors import ConvergenceError
from convergence.core.store import Store
from convergence.models import build_model
from convergence.models.base import Model
from convergence.run.plan import Cell, expand
from convergence.run.runner import RunSummary, run_study


@dataclass
class Curve:
    """What is known of one curve: per probed step count, the indicative and converged
    distances to the reference (the curve's largest step count), the residual noise and
    clipped fraction, and the change to ``s + 1``."""

    template: Cell
    top: int
    distance: dict[int, float] = field(default_factory=dict)
    converged_distance: dict[int, float] = field(default_factory=dict)
    noise: dict[int, float] = field(default_factory=dict)
    clipped: dict[int, float] = field(default_factory=dict)
    change: dict[int, float] = field(default_factory=dict)
    samples: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    brackets: dict[str, int] = field(default_factory=dict)  # last bracket width per point
    spent: int = 0  # sampler steps run for this curve

    def cell(self, steps: int) -> Cell:
        return replace(self.template, steps=int(steps))

    @property
    def probed(self) -> list[int]:
        """Probed step counts below the reference (the reference is no evidence)."""
        return sorted(s for s in self.distance if s < self.top)


class Judge(Protocol):
    """What the search asks of the analysis."""

    def measure(self, curve: Curve, new: set[int], store: Store) -> None:
        """Fill in the curve's measurements of the newly run step counts."""

    def next_probes(self, curve: Curve) -> tuple[set[int], dict[str, tuple]]:
        """Step counts the curve needs next, and per point ``(steps or None, known_to)``."""

    def write(self, store: Store, curves: list[Curve], found: list[dict[str, tuple]]) -> None:
        """Record the points found (the analysis' table of them)."""


def _run(cfg: Config, model: Model, curves: list[Curve], wanted: dict[int, set[int]]) -> int:
    """Run the wanted (curve, steps) cells through the ordinary runner into the store
    (cells already stored are not run again)."""
    cells = [curves[i].cell(s) for i, steps in wanted.items() for s in steps]
    round_cfg = replace(cfg, steps=sorted({c.steps for c in cells}))
    return run_study(round_cfg, model, only={c.hash for c in cells}).ran


def refine(curves: list[Curve], coarse: list[int], judge: Judge, budget: float,
           run_and_measure: Callable[[dict[int, set[int]]], None]) -> list[dict[str, tuple]]:
    """The search itself: the coarse sweep for every curve, then rounds of probes (all
    curves' probes of a round run together, so they batch) until no curve needs one or
    its next probes would spend more than ``budget`` steps. ``run_and_measure`` runs
    ``{curve index: step counts}`` and fills in the curves' measurements."""
    wanted = {i: set(coarse) for i in range(len(curves))}
    found: list[dict[str, tuple]] = [{} for _ in curves]
    while wanted:
        run_and_measure(wanted)
        for i, new in wanted.items():
            curves[i].spent += sum(new)
        wanted = {}
        for i, curve in enumerate(curves):
            needs, found[i] = judge.next_probes(curve)
            if needs and curve.spent + sum(needs) <= budget:
                wanted[i] = needs
    return found


def run_adaptive(cfg: Config, judge: Judge, model: Model | None = None) -> RunSummary:
    """Coarse sweep over ``cfg.steps``, then bisection per curve and key point as ``judge``
    directs; writes the cells to the store and the points through ``judge.write``."""
    if cfg.shard is not None:
        raise ConvergenceError("search=adaptive needs whole curves and shard= splits them by cell; "
                               "split an adaptive study by prompts, seeds or samplers instead")
    if cfg.analysis.reference != "highest":
        raise ConvergenceError(f"search=adaptive measures each curve against its largest step "
                               f"count (analysis.reference=highest), not "
                               f"{cfg.analysis.reference!r}")
    if len(set(cfg.steps)) < 2:
        raise ConvergenceError(f"search=adaptive needs at least two step counts (a coarse sweep), "
                               f"got steps={list(cfg.steps)}")
    start = time.perf_counter()
    model = model or build_model(cfg.model, cfg.width, cfg.height)
    store = Store(cfg.study_dir())
    coarse = sorted(set(cfg.steps))
    templates = {c.group_key: c for c in expand(cfg, model.name, model.fingerprint())}
    curves = [Curve(t, top=coarse[-1]) for t in templates.values()]
    budget = cfg.search_budget if cfg.search_budget is not None else math.inf
    ran = 0

    def run_and_measure(wanted: dict[int, set[int]]) -> None:
        nonlocal ran
        ran += _run(cfg, model, curves, wanted)
        for i, new in wanted.items():
            judge.measure(curves[i], new, store)

    found = refine(curves, coarse, judge, budget, run_and_measure)
    run_study(cfg, model, only=set())  # runs nothing; records the study's own config
    judge.write(store, curves, found)
    cells = [c.cell(s) for c in curves for s in sorted(c.distance)]
    return RunSummary(store, cells, ran, len(cells) - ran, time.perf_counter() - start)


