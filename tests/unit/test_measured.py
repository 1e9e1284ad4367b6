"""The recorded measurements (results/measured/): every interval holds its own estimate,
and every analysis-derived file names the command that regenerates it."""

from pathlib import Path

import pandas as pd
import pytest

MEASURED = Path(__file__).parents[2] / "results" / "measured"
#: (estimate, low, high) columns of the analysis tables; orders are -b, so b's interval is
#: (b_lo, b_hi) and an order's (order_lo, order_hi)
INTERVALS = (("b", "b_lo", "b_hi"), ("order", "order_lo", "order_hi"),
             ("steps", "ci_lo", "ci_hi"))
DERIVED = sorted([*MEASURED.glob("default_*.csv"), *MEASURED.glob("orders_*.csv")])


def _read(path: Path) -> pd.DataFrame:
    """A recorded table, under its "# made by: ..." line (the rows hold '#' themselves)."""
    first = path.read_text().split("\n", 1)[0]
    return pd.read_csv(path, skiprows=1 if first.startswith("# made by") else 0)


def _violations(df: pd.DataFrame) -> list[str]:
    bad = []
    for est, lo, hi in INTERVALS:
        if not {est, lo, hi} <= set(df.columns):
            continue
        e, a, b = (pd.to_numeric(df[c], errors="coerce") for c in (est, lo, hi))
        # a NaN bound is open (e.g. a median's upper bound above the sweep)
        out = e.notna() & ((a.notna() & (e < a - 1e-9)) | (b.notna() & (e > b + 1e-9)))
        bad += [f"{est}={e[i]:g} outside [{a[i]:g}, {b[i]:g}] (row {i})" for i in df.index[out]]
    return bad


def test_an_interval_that_excludes_its_estimate_is_found():
    stale = pd.DataFrame({"order": [1.0091], "order_lo": [1.0100], "order_hi": [1.0100]})
    assert _violations(stale) == ["order=1.0091 outside [1.01, 1.01] (row 0)"]
    assert _violations(stale.assign(order_lo=1.0)) == []


@pytest.mark.parametrize("path", DERIVED, ids=lambda p: p.name)
def test_recorded_intervals_hold_their_estimates(path):
    assert _violations(_read(path)) == []


@pytest.mark.parametrize("path", [*DERIVED, MEASURED / "order_rule.txt",
                                  MEASURED / "sampler_table.md"], ids=lambda p: p.name)
def test_each_derived_file_names_its_command(path):
    assert "benchmarks/regenerate_measured.py" in path.read_text()
