"""The report's title and subtitle describe the study as run (report/__init__.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from convergence.report import _title, _varied
from convergence.report.data import StudyData


def study(**cols) -> StudyData:
    n = 4
    base = {"model": ["gauss"] * n, "width": [32] * n, "height": [32] * n,
            "sampler": ["euler", "euler", "heun", "heun"], "schedule": ["karras"] * n,
            "steps": [8, 16, 8, 16], "cfg": [1.0] * n, "topic": ["gauss"] * n, "seed": [1] * n}
    cells = pd.DataFrame({**base, **cols})
    empty = pd.DataFrame()
    return StudyData(Path("/results/mine"), cells, empty, empty, None, None)


def test_title_names_the_model_and_size_of_the_cells():
    assert _title(study()) == "Convergence report: mine · model gauss · 32×32"
    two = study(model=["a", "a", "b", "b"], width=[32, 32, 64, 64], height=[32, 32, 64, 64])
    assert _title(two) == "Convergence report: mine · model a, b · 32×32, 64×64"


def test_subtitle_says_what_is_varied_and_what_is_fixed():
    assert _varied(study()) == ("varies 2 samplers (euler, heun); 2 step counts (8, 16) · fixed: "
                                "schedule karras, cfg 1, topic gauss, seed 1")
