"""The `portable` tests (bit identity and measured tolerances) rerun under forced kernel
variants, so a test that only holds on one CPU's kernels fails on the machine it was
written on, not on the next one (CI's CPU changes between submissions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, _cpu

pytestmark = pytest.mark.slow

#: ATen's vector kernels, oneDNN's (the diffusers UNet's convolutions on the CPU) and MKL's
#: (its matrix products), each forced down to the variant named
VARIANTS = {
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
#: what pytest's header (conftest.pytest_report_header) says ATen runs under each variant
CAPABILITY = {"default": "DEFAULT", "avx2": "AVX2"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_portable_tests_pass_under_forced_kernels(variant):
    if variant == "avx2" and "avx2" not in _cpu()[1]:
        pytest.skip("this CPU has no AVX2")
    env = {**os.environ, **VARIANTS[variant], "HF_HUB_OFFLINE": "1"}
    # only the files that hold portable tests: collecting the whole suite costs seconds
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("*/test_*.py")
                   if "mark.portable" in p.read_text() and p.name != Path(__file__).name)
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                          "-m", "portable", *files],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    # the variable took effect: ATen reports the forced capability
    assert f"ATen CPU capability {CAPABILITY[variant]}" in out, out[-2000:]
    assert res.returncode == 0, out[-4000:]
    assert " passed" in out and " failed" not in out
