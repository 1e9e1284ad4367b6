"""The key points' thresholds are the ones benchmarks/keypoint_truth.py chose on its
calibration split, and they score >= 0.9 balanced accuracy on its held-out split (seeds
and prompts it never saw): results/measured/keypoint_truth.csv, from that command."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convergence.analysis.calibration import score
from convergence.config.schema import AnalysisConfig

RECORD = Path(__file__).parents[2] / "results" / "measured" / "keypoint_truth.csv"
#: (point, rule) of the record -> {measure in the rule: AnalysisConfig field}
CHOSEN = {("indicative", "lpips"): {"lpips": "indicative"},
          ("indicative", "rel_rmse"): {"rel_rmse": "indicative_fallback"},
          ("coherent", "noise_levels+clipped"): {"noise_levels": "coherent_noise",
                                                 "clipped": "coherent_clipped"},
          ("converged", "visible"): {"visible": "converged"}}


def _record() -> pd.DataFrame:
    return pd.read_csv(RECORD, comment="#").set_index(["point", "rule"])


@pytest.mark.parametrize("key", list(CHOSEN))
def test_configured_thresholds_are_the_recorded_choice(key):
    rec = _record().loc[key]
    got = dict(re.findall(r"(\w+)<=([\d.eE+-]+)", rec.thresholds))
    defaults = AnalysisConfig()
    for measure, field in CHOSEN[key].items():
        assert getattr(defaults, field) == float(got[measure]), (key, measure)


@pytest.mark.parametrize("point,rule", [("indicative", "lpips"),
                                        ("coherent", "noise_levels+clipped"),
                                        ("converged", "visible")])
def test_each_point_scores_at_least_0_9_on_held_out_data(point, rule):
    assert _record().loc[(point, rule)].balanced_accuracy >= 0.9


def test_score_counts_what_it_is_given():
    """Balanced accuracy is the mean of recall and specificity: 3 of 4 positives found and
    1 of 2 negatives rejected give (0.75 + 0.5) / 2."""
    truth = np.array([1, 1, 1, 1, 0, 0], bool)
    pred = np.array([1, 1, 1, 0, 1, 0], bool)
    s = score(pred, truth)
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (3, 1, 1, 1)
    assert s["balanced_accuracy"] == pytest.approx(0.625) and s["precision"] == 0.75
