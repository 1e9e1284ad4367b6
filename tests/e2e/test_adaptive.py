"""Adaptive key-point search: bisection against the analysis' dense definitions, on
synthetic curves (exact answers known) and on the embedded model."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from inprocess import run_main

from convergence.analysis.adaptive import KeyPointJudge, load_points
from convergence.analysis.distances import compute_distances
from convergence.analysis.inputs import load_cells
from convergence.analysis.keypoints import (
    POINTS,
    CurveMeasures,
    curve_points,
    forward_changes,
    seed_points,
)
from convergence.config.schema import AnalysisConfig
from convergence.models.analytic import AnalyticModel
from convergence.run.adaptive import Curve, refine, run_adaptive
from convergence.run.plan import Cell
from convergence.run.runner import run_study

# thresholds pinned here (the defaults may be recalibrated; the costs below were measured
# with these)
A = AnalysisConfig(indicative=0.1, indicative_fallback=0.1, converged=0.015, coherent_noise=0.4,
                   coherent_clipped=1.0, nonconvergence_change=0.1)
TEMPLATE = Cell("analytic", "m", "food", "p", 1, "euler", "discrete", 1, 7.5, 32, 32)


def synthetic(top: int, rate: float, scale: float, noise_scale: float):
    """A curve that approaches its limit like scale * s^-rate (distances measured against
    the step count ``top``, as the analysis' "highest" reference does)."""
    x = {s: scale * s ** -rate for s in range(1, top + 2)}
    dist = {s: abs(x[s] - x[top]) for s in range(1, top + 1)}
    change = {s: abs(x[s] - x[s + 1]) for s in range(1, top)}
    noise = {s: noise_scale / s for s in range(1, top + 1)}
    return dist, change, noise


def dense_points(top, dist, change, noise) -> dict:
    """The analysis' key points of a dense sweep 1..top (change to the next = to s + 1); the
    synthetic curve's one distance serves the indicative and the converged measure."""
    steps = list(range(1, top + 1))
    d = np.array([math.nan if s == top else dist[s] for s in steps])
    ch = forward_changes(steps, [change.get(s, math.nan) for s in steps])
    m = CurveMeasures(steps, d, d, ch, np.array([noise[s] for s in steps]), np.zeros(len(steps)))
    return curve_points(m, A, A.indicative)


def search(top, dist, change, noise, budget=math.inf):
    curve = Curve(TEMPLATE, top=top)

    def measure(wanted):
        for s in wanted[0]:
            curve.distance[s] = math.nan if s == top else dist[s]
            curve.converged_distance[s] = curve.distance[s]
            curve.noise[s] = noise[s]
            curve.clipped[s] = 0.0
        for s in curve.distance:
            if s + 1 in curve.distance:
                curve.change[s] = change[s]

    coarse = sorted({2 ** k for k in range(int(math.log2(top)) + 1)} | {top})
    found = refine([curve], coarse, KeyPointJudge(A), budget, measure)[0]
    return curve, found


def test_bisection_finds_the_dense_points_exactly_on_monotone_curves():
    top, dense_steps, spent = 100, sum(range(1, 101)), []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        dist, change, noise = synthetic(top, rate=rng.uniform(0.5, 2.0),
                                        scale=rng.uniform(0.5, 20), noise_scale=rng.uniform(0.5, 8))
        dense = dense_points(top, dist, change, noise)
        curve, found = search(top, dist, change, noise)
        for p in POINTS:
            assert found[p][0] == dense[p], (seed, p)
            assert found[p][1] <= 1  # known to one step
        spent.append(curve.spent / dense_steps)
    # measured on these 12 curves (deterministic): mean 0.137, max 0.227 of the dense
    # sweep's steps; late points (converged at 90+ of 100) cost the most
    assert np.mean(spent) <= 0.15 and max(spent) <= 0.25


def test_coherence_follows_the_pictures_own_noise():
    """A curve whose distance is small early but whose residual noise stays above the bound
    until step 40: coherence waits for the noise, whatever the distance, as in the dense
    sweep."""
    top = 64
    dist, change, noise = synthetic(top, rate=1.0, scale=0.5, noise_scale=0.0)
    noise = {s: (1.0 if s < 40 else 0.0) for s in noise}
    dense = dense_points(top, dist, change, noise)
    assert dense["coherent"] == 40 and dense["indicative"] < 40
    _, found = search(top, dist, change, noise)
    assert found["coherent"][0] == 40


def test_a_spent_budget_stops_the_search_and_says_how_well_points_are_known():
    top = 100
    dist, change, noise = synthetic(top, rate=1.0, scale=5.0, noise_scale=2.0)
    coarse_cost = sum({1, 2, 4, 8, 16, 32, 64, 100})
    curve, found = search(top, dist, change, noise, budget=coarse_cost)
    assert curve.spent == coarse_cost
    assert max(w for _, w in found.values()) > 1


def _dense_analysis(cfg, model):
    """The analysis' own per-seed key points of a dense sweep."""
    run_study(cfg, model)
    a = replace(cfg.analysis, references=["highest"], metrics=[cfg.analysis.metric],
                image_references=[])
    store, cells = load_cells(cfg)
    samples = np.stack([store.load_sample(h) for h in cells.hash]).astype(np.float64)
    return seed_points(a, compute_distances(a, store, cells, samples)[0], cells)


@pytest.mark.slow
def test_on_the_embedded_model_adaptive_equals_dense_and_reruns_for_free(study_config, model32,
                                                                         tmp_path, monkeypatch):
    common = dict(samplers=["euler", "heun"], seeds_per_prompt=1)
    dense = _dense_analysis(study_config(steps=list(range(1, 25)),
                                         results_dir=str(tmp_path / "dense"), **common), model32)
    cfg = study_config(steps=[1, 2, 4, 8, 16, 24], search="adaptive",
                       results_dir=str(tmp_path / "adaptive"), **common)
    summary = run_adaptive(cfg, KeyPointJudge(cfg.analysis), model32)
    points = load_points(summary.store.root)
    assert set(points.search) == {"adaptive"} and len(points) == 4 * 3
    merged = dense.merge(points, on=["topic", "seed", "sampler", "point"], suffixes=("_d", "_a"))
    assert len(merged) == 12
    for _, r in merged.iterrows():
        if pd.isna(r.steps_d):
            assert pd.isna(r.steps_a), r
        else:
            assert abs(r.steps_d - r.steps_a) <= 1, r  # the target: ±1 step
    stored = summary.store.load()
    assert stored.nfe.sum() < 0.5 * sum(range(1, 25)) * (1 + 2) * 2  # euler 1, heun ~2 NFE/step
    calls = {"n": 0}
    real = AnalyticModel.denoise

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AnalyticModel, "denoise", counting)
    again = run_adaptive(cfg, KeyPointJudge(cfg.analysis), model32)
    assert calls["n"] == 0 and again.ran == 0
    pd.testing.assert_frame_equal(load_points(again.store.root), points)


@pytest.mark.parametrize("override,message", [
    (["search=dense"], "search='dense' is not a search; use grid or adaptive"),
    (["search=adaptive", "shard=0/2"], "search=adaptive needs whole curves"),
    (["search=adaptive", "steps=[8]"], "search=adaptive needs at least two step counts"),
    (["search_budget=0"], "search_budget must be >= 1"),
])
def test_bad_search_settings_are_one_line(capsys, tmp_path, override, message):
    code, out, err = run_main(capsys, "run", "study=smoke", *override, f"results_dir={tmp_path}",
                              "progress=false")
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


def test_cli_adaptive_run_and_analyze(capsys, tmp_path):
    args = ["study=smoke", "search=adaptive", "samplers=[euler]", "steps=[2,4,8]",
            f"results_dir={tmp_path}", "progress=false", "threads=1"]
    code, out, err = run_main(capsys, "run", *args)
    assert code == 0, err
    points = load_points(tmp_path / "smoke")
    assert len(points) == 4 * 3 and set(points.point) == set(POINTS)
    # the analysis takes the pinned points into its own tables, marked
    code, out, err = run_main(capsys, "analyze", *args, "analysis.references=[highest]",
                              "analysis.metrics=[rel_rmse]", "analysis.image_references=[]")
    assert code == 0, err
    seeds = pd.read_csv(tmp_path / "smoke" / "keypoints_seed.csv")
    assert set(seeds.search) == {"adaptive"}
    key = ["prompt", "seed", "point"]
    pd.testing.assert_series_equal(seeds.set_index(key).steps.sort_index(),
                                   points.set_index(key).steps.sort_index().astype(float),
                                   check_dtype=False)
    kp = pd.read_csv(tmp_path / "smoke" / "keypoints.csv")
    assert set(kp[kp.point.isin(POINTS)].search) == {"adaptive"}
