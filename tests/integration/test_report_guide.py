"""The guide's headline tables and the variety across seeds, from known numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convergence.report.data import StudyData
from convergence.report.guide import (
    batch_recipes,
    duration,
    keypoints_guide_layout,
    speed_vs_guide,
)
from convergence.report.tables import batch_workflow
from convergence.report.variety import pairwise_variety


def cells_for(samplers: dict, steps=(10, 20, 100), model="analytic", sec_per_nfe=0.6) -> pd.DataFrame:
    """Cells of one topic: NFE(steps) per sampler, seconds = NFE × sec_per_nfe."""
    rows = []
    for sampler, nfe in samplers.items():
        for s in steps:
            rows.append({"sampler": sampler, "schedule": "discrete", "cfg": 7.5, "topic": "anime",
                         "steps": s, "nfe": nfe(s), "seconds": sec_per_nfe * nfe(s),
                         "model": model, "width": 64, "height": 64, "device": "cpu",
                         "batch_size": 4})
    return pd.DataFrame(rows)


def kp_rows(sampler: str, points: dict, nfe) -> list[dict]:
    return [{"topic": t, "sampler": sampler, "schedule": "discrete", "cfg": 7.5, "point": p,
             "steps": s, "nfe": nfe(s) if s == s else np.nan, "seconds": np.nan, "metric": "rmse",
             "converges": True} for t in ("anime", "all") for p, s in points.items()]


def study_of(cells: pd.DataFrame, kp: pd.DataFrame) -> StudyData:
    return StudyData(Path("/nonexistent"), cells, pd.DataFrame(columns=["metric"]), kp,
                     None, None, {"config": {"prompts": [{"topic": "anime"}]}}, "rmse")


def test_guides_recipe_and_example_in_nfe_and_seconds():
    one, two = (lambda s: s), (lambda s: 2 * s - 1)
    cells = cells_for({"lms": one, "heun": two})
    kp = pd.DataFrame(kp_rows("lms", {"indicative": 20, "coherent": 20, "converged": 100}, one)
                      + kp_rows("heun", {"indicative": 10, "coherent": 10, "converged": 20}, two))
    s = study_of(cells, kp)
    t = batch_recipes(s, batch_workflow(s, 100, 3), 100, 3)
    d = t.data.set_index(["recipe", "sampler"])
    # the guide's own example, from its inputs (60 s per 100 steps): 6000 s vs 780 s
    ex = d.loc[("the guide's example (M1 Max)", "")]
    assert (ex["A_seconds"], ex["B_seconds"]) == pytest.approx((6000, 780))
    assert "A 1 h 40 min vs B 13 min: 7.7× as quick" in t.shown["stated as the guide does"].iloc[0]
    lms = d.loc[("the guide's recipe, here", "lms")]
    assert (lms["A_nfe"], lms["B_nfe"]) == (100 * 100, 100 * 10 + 3 * 100)
    assert lms["A_seconds"] == pytest.approx(0.6 * 10000)
    assert not lms["candidates_indicative"] and lms["refined_converged"]  # lms needs 20 steps
    heun = d.loc[("the guide's recipe, here", "heun")]
    assert heun["B_nfe"] == 100 * 19 + 3 * 199 and heun["candidates_indicative"]
    best = d.loc[("best measured recipe", "heun")]  # heun 10 -> 20 steps: 100·19 + 3·39 NFE
    assert best["B_nfe"] == 100 * 19 + 3 * 39 and best["A_nfe"] == 100 * 39
    # the embedded model leads with NFE
    assert "NFE: 7.7× as quick" in t.shown.set_index("sampler").loc["lms", "stated as the guide does"]


def test_guides_recipe_needs_its_step_counts():
    cells = cells_for({"euler": lambda s: s}, steps=(4, 8, 16))
    kp = pd.DataFrame(kp_rows("euler", {"indicative": 8, "coherent": 8, "converged": 16}, lambda s: s))
    s = study_of(cells, kp)
    t = batch_recipes(s, batch_workflow(s, 100, 3), 100, 3)
    assert list(t.data["recipe"]) == ["the guide's example (M1 Max)", "best measured recipe"]
    assert "does not sweep 10 and 100 steps" in t.note


def test_speed_leads_with_nfe_on_the_embedded_model_and_seconds_on_a_real_one():
    samplers = {"euler": lambda s: s, "heun": lambda s: 2 * s - 1}
    analytic = speed_vs_guide(study_of(cells_for(samplers), pd.DataFrame()))
    assert list(analytic.shown.columns)[2] == "NFE / step"
    assert "it/s (this model, this machine)" in analytic.shown.columns
    d = analytic.data.set_index("sampler")
    assert d.loc["heun", "nfe_per_step"] == pytest.approx(2.0)
    # the guide's K_HEUN 0.95 it/s is close to what NFE alone predicts: 1.86 / 2
    assert d.loc["heun", "guide_it_per_s_from_nfe"] == pytest.approx(0.93)
    real = study_of(cells_for(samplers, model="sd15").assign(device="cuda:0"), pd.DataFrame())
    real.study["device_name"] = "NVIDIA H100 80GB HBM3"
    t = speed_vs_guide(real)
    assert list(t.shown.columns)[2] == "s / image at 100 steps"
    assert "NVIDIA H100 80GB HBM3 (cuda:0)" in t.title and "batch size 4" in t.title


def test_guide_layout_puts_three_points_in_one_cell():
    one = lambda s: s  # noqa: E731
    kp = pd.DataFrame(kp_rows("euler", {"indicative": 20, "coherent": 10, "converged": 100}, one))
    t = keypoints_guide_layout(study_of(cells_for({"euler": one}), kp))
    row = t.shown.iloc[0]
    assert row["guide name"] == "K_EULER" and row["anime"] == "20 · 10 · 100"


def test_duration_reads_like_the_guide():
    assert duration(6000) == "1 h 40 min" and duration(780) == "13 min"
    assert duration(4.2) == "4.2 s" and duration(0.012) == "12 ms"


def test_variety_is_the_mean_distance_over_pairs_of_seeds(tmp_path):
    from convergence.core.store import Store
    store = Store(tmp_path)
    rows = []
    for seed, level in ((1, 0.0), (2, 0.3), (3, 0.9)):  # constant images: pair rmse = |a - b|
        h = f"h{seed}"
        store.write_sample(h, np.full((3, 4, 4), level, np.float32))
        rows.append({"hash": h, "topic": "t", "prompt": "p", "cfg": 7.5, "sampler": "euler",
                     "schedule": "discrete", "steps": 8, "seed": seed})
    s = StudyData(tmp_path, pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame(), None, None, {}, "rmse")
    v = pairwise_variety(s).iloc[0]
    assert v["n_pairs"] == 3
    assert v["mean"] == pytest.approx((0.3 + 0.9 + 0.6) / 3, rel=1e-6)
    assert (v["min"], v["max"]) == pytest.approx((0.3, 0.9), rel=1e-6)
