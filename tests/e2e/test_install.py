"""`pip install .` into a fresh virtualenv: the configs ship with the package, so
`convergence run study=smoke` works from an empty directory; a third-party sampler
package registered by entry point is found by `convergence check` and by the pytest
plugin's `convergence_check` fixture.

The virtualenv borrows this environment's dependencies through a .pth file (torch is
GBs) and installs only the two packages, without network (--no-deps
--no-build-isolation)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "tests" / "helpers" / "plugin_pkg"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONVERGENCE_CONF")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def _sh(*cmd, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # a copy of what a release contains, so the build writes nothing into the checkout
    src = root / "src-copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    plugin = root / "plugin"
    shutil.copytree(PLUGIN, plugin, ignore=shutil.ignore_patterns("__pycache__"))
    for pkg in (src, plugin):
        res = _sh(py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                  "--no-index", pkg, cwd=root)
        assert res.returncode == 0, res.stdout + res.stderr
    return env_dir


@pytest.mark.slow
def test_smoke_study_runs_from_an_empty_directory(venv, tmp_path):
    where = _sh(venv / "bin" / "python", "-c", "import convergence; print(convergence.__file__)",
                cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    res = _sh(venv / "bin" / "convergence", "run", "study=smoke", "progress=false", "threads=1",
              cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "results" / "smoke" / "cells.parquet").exists()


@pytest.mark.slow
def test_entry_point_sampler_is_checked(venv, tmp_path):
    good = _sh(venv / "bin" / "convergence", "check", "midpoint", cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "midpoint: all checks passed" in good.stdout
    bad = _sh(venv / "bin" / "convergence", "check", "midpoint_wrong_last", cwd=tmp_path)
    assert bad.returncode == 1 and "does not reach the limit" in bad.stdout


@pytest.mark.slow
def test_pytest_plugin_fixture_in_the_authors_repository(venv, tmp_path):
    shutil.copy(PLUGIN / "check_my_sampler.py", tmp_path)
    res = _sh(venv / "bin" / "python", "-m", "pytest", "-p", "no:cacheprovider", "-q",
              "check_my_sampler.py", cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "1 failed, 1 passed" in out
    assert "midpoint_extra_call: regression: nfe: NFE per step regressed" in out
