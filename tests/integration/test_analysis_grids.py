"""Grid frames show the key points of the seed the grid shows, not a median of all seeds."""

from pathlib import Path

import pandas as pd

from convergence.report.data import StudyData
from convergence.report.grids import GridSpec, keypoint_marks

STEPS = [4, 8, 10, 20]


def seed_rows(seed: int, ind: int, conv: int) -> list[dict]:
    return [{"topic": "food", "prompt": "burger", "seed": seed, "sampler": "euler",
             "schedule": "discrete", "cfg": 7.5, "metric": "rel_rmse", "point": p, "steps": s}
            for p, s in (("indicative", ind), ("coherent", ind), ("converged", conv))]


def test_marks_follow_the_seed_shown():
    per_seed = pd.DataFrame(seed_rows(1, 4, 10) + seed_rows(2, 8, 20) + seed_rows(3, 10, 20))
    median = pd.DataFrame([{**r, "prompt": None, "seed": None} for r in seed_rows(0, 8, 20)])
    study = StudyData(Path("/nonexistent"), pd.DataFrame(), pd.DataFrame(), median, None, None,
                      metric="rel_rmse", keypoints_seed=per_seed)
    for seed, ind, conv in ((1, 4, 10), (2, 8, 20), (3, 10, 20)):
        spec = GridSpec("food", "burger", seed, 7.5, [("euler", "discrete")], STEPS, pd.DataFrame())
        marks = keypoint_marks(study, spec)
        assert "indicative" in marks[("euler", "discrete", ind)]
        assert "converged" in marks[("euler", "discrete", conv)]
    # an older analysis without per-seed points: the median, as before
    study.keypoints_seed = None
    marks = keypoint_marks(study, GridSpec("food", "burger", 1, 7.5, [("euler", "discrete")],
                                           STEPS, pd.DataFrame()))
    assert "indicative" in marks[("euler", "discrete", 8)]
