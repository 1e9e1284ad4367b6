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

import numpy as np
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
    # theory: 1 and 2; measured 1.00 and 2.11 (three local slopes each, 16-128 steps vs 256)
    assert abs(orders["euler"] - 1) < 0.1 and abs(orders["heun"] - 2) < 0.15, orders
    for slopes in all_.slopes:
        assert len(slopes.split(",")) >= 3
    _heun_reaches_the_exact_solution(tmp_path, study, cells)
    # check: heun reaches the model's own exact limit (its exact_solution), at order ~2
    assert "heun: all checks passed" in out
    order_line = next(ln for ln in out.splitlines() if ln.startswith("order "))
    measured = float(order_line.split()[4])   # order, 2, +-, 0.25, MEASURED (steps ..) yes
    assert math.isclose(measured, 2.0, abs_tol=0.1), order_line
    limit_line = next(ln for ln in out.splitlines() if ln.startswith("limit "))
    assert "reaches the exact limit" in limit_line and limit_line.rstrip().endswith("yes")


def _heun_reaches_the_exact_solution(tmp_path: Path, study: Path, cells: pd.DataFrame) -> None:
    """The harness's heun on the user's model converges to the model's own closed-form ODE
    solution, D(x(sigma_min)) from the cell's initial noise, at order 2."""
    import torch

    from convergence.core.store import Store
    sys.path.insert(0, str(tmp_path / "examples"))
    try:
        from gaussian_model import make_denoiser
    finally:
        sys.path.remove(str(tmp_path / "examples"))
    den = make_denoiser(sigma_data=0.5, contrast=0.8)   # the study's params
    store = Store(study)
    heun = cells[cells.sampler == "heun"]
    errors = {}
    for n in (64, 128, 256):
        at = heun[heun.steps == n]
        got = torch.from_numpy(np.stack([store.load_sample(h) for h in at.hash])).double()
        noise = torch.stack([torch.randn((1, 32, 32), generator=torch.Generator("cpu")
                                         .manual_seed(int(s)), dtype=torch.float32)
                             for s in at.seed]).double()
        x0 = noise * float(at.noise_scale.iloc[0])   # where the sampler started
        end = den.exact_solution(x0, float(at.sigma_start.iloc[0]), float(at.sigma_min.iloc[0]))
        want = den(end, torch.full((len(at),), float(at.sigma_min.iloc[0]), dtype=torch.float64))
        errors[n] = float((got - want).pow(2).mean().sqrt())
    slopes = [math.log2(errors[a] / errors[b]) for a, b in ((64, 128), (128, 256))]
    # measured (3 seeds): errors 1.1e-3, 2.7e-4, 6.5e-5 at 64, 128, 256 steps, slopes 2.04 and
    # 2.02 (float32 samples round at ~1e-7, far below); 0.15 leaves room for other CPUs'
    # rounding of the same arithmetic
    assert all(abs(v - 2) < 0.15 for v in slopes), (errors, slopes)


def test_check_without_an_exact_solution_uses_heun_at_four_times_the_steps(monkeypatch):
    """A plain function D(x, sigma) has no exact_solution: the limit is not judged, heun's
    order is measured against heun@1024 (the analysis' finite-reference slopes)."""
    import types

    from convergence.core.registries import MODELS
    from convergence.tools.check import check_sampler

    def shrink(x, sigma):
        """D of N(0.3, 0.25 I) data."""
        return 0.3 + 0.25 / (0.25 + sigma.reshape(-1, 1, 1, 1) ** 2) * (x - 0.3)
    mod = types.ModuleType("plain_denoiser_for_check")
    mod.shrink = shrink
    monkeypatch.setitem(sys.modules, "plain_denoiser_for_check", mod)
    try:
        report = check_sampler("heun", None, ["model._target_=plain_denoiser_for_check.shrink",
                                              "model.name=plain", "model.params.channels=1",
                                              "model.params.display_range=[-1.5,2.1]"])
    finally:
        MODELS.unregister("plain")
    rows = {r.check: r for r in report.rows}
    assert report.passed, report.summary()
    assert rows["limit"].passed is None and "plain has no exact solution" in rows["limit"].expected
    assert "reference heun@1024" in rows["limit"].measured
    assert rows["order"].passed is True, rows["order"].measured
