"""pytest plugin (entry point ``pytest11``): the ``convergence_check`` fixture, so a sampler
author writes in their own repository

    def test_my_sampler(convergence_check):
        convergence_check("my_sampler", order=2)

and gets the checks and messages of `convergence check`: the test fails naming what
regressed, with the whole table in the failure text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def convergence_check():
    """``check(sampler, baseline=None, **claims) -> CheckReport``; fails the test on a
    regression. ``sampler``: a registered name, ``module:function`` or a ``_target_``
    node; ``baseline``: a path (None: no baseline); ``claims``: order, nfe_per_step, ..."""

    def check(sampler: Any, baseline: str | Path | None = None, **claims: Any):
        # imported when used: pytest loads this plugin in every session of the environment
        from convergence.tools import baseline as B
        from convergence.tools.check import check_sampler
        report = check_sampler(sampler, B.load(Path(baseline)) if baseline else None, **claims)
        if not report.passed:
            pytest.fail(f"{report.summary()}\n{report.table()}", pytrace=False)
        return report

    return check
