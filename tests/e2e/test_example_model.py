"""docs/plugins.md's worked example of a user's own model, run exactly as documented: the
lines between its ``example-model`` markers, in a shell, from a folder holding the
repository's ``examples/`` (results land there, not in the checkout)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "plugins.md"


def documented_commands() -> str:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- example-model:begin -->\s*```bash\n(.*?)```\s*<!-- example-model:end -->",
                      text, re.S)
    assert block, "docs/plugins.md lost its example-model block"
    return block.group(1)


@pytest.mark.slow   # four commands, each a fresh process: ~30 s of CPU
def test_the_documented_example_runs_and_checks_heun_at_order_two(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = "set -euo pipefail\n" + documented_commands()
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    study = tmp_path / "results" / "gauss"
    cells = pd.read_parquet(study / "cells.parquet")
    assert len(cells) == 42 and set(cells.model) == {"gauss"}   # named by the config
    assert (study / "report" / "index.html").exists()
    page = (study / "report" / "index.html").read_text(encoding="utf-8")
    assert "model gauss · 32×32" in page and "embedded analytic model" not in page
    rates = pd.read_csv(study / "rates.csv")
    all_ = rates[(rates.level == "all") & (rates.x == "steps") & (rates.reference == "highest")]
    orders = dict(zip(all_.sampler, all_.order, strict=True))
    # theory: 1 and 2; measured 0.99 and 2.08 (three local slopes each, 32-256 steps)
    assert abs(orders["euler"] - 1) < 0.1 and abs(orders["heun"] - 2) < 0.15, orders
    for slopes in all_.slopes:
        assert len(slopes.split(",")) >= 3
    # check: heun's order ~2 against heun@1024 (no exact solution), its limit not judged
    assert "heun: all checks passed" in out
    order_line = next(ln for ln in out.splitlines() if ln.startswith("order "))
    measured = float(order_line.split()[4])   # order, 2, +-, 0.25, MEASURED (steps ..) yes
    assert math.isclose(measured, 2.0, abs_tol=0.1), order_line
    assert "not judged (gauss has no exact solution)" in out
