"""Analysis on sweeps with several CFG scales, and bad analysis options."""

from __future__ import annotations

import pandas as pd
import pytest
from inprocess import run_main

SMALL = ["study=smoke", "samplers=[euler]", "steps=[4,8,16,24]", "seeds=[1,2]", "progress=false",
         "width=32", "height=32"]


def test_two_cfg_scales_analyze_and_report(capsys, tmp_path):
    code, out, err = run_main(capsys, "all", *SMALL, "cfg=[1.0,7.5]", f"results_dir={tmp_path}")
    assert code == 0, err
    kp = pd.read_csv(tmp_path / "smoke" / "keypoints.csv")
    assert sorted(set(kp.cfg)) == [1.0, 7.5]
    assert "report:" in out


@pytest.mark.parametrize("override,message", [
    ("analysis.metric=psnr", "is a similarity"),
    ("analysis.reference=bogus", "unknown analysis.reference 'bogus'"),
    ("analysis.reference=exact", "ambiguous"),
])
def test_bad_analysis_options_are_one_line(capsys, tmp_path, override, message):
    assert run_main(capsys, "run", *SMALL, f"results_dir={tmp_path}")[0] == 0
    code, out, err = run_main(capsys, "analyze", *SMALL, override, f"results_dir={tmp_path}")
    assert code == 2 and message in err and "Traceback" not in err + out
