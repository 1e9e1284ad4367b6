"""Shared fixtures: a small analytic model, a study config builder and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


#: the test layers, one folder each (README "Tests")
LAYERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Every test is marked with its folder's layer: `pytest -m unit`."""
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


def pytest_configure(config):
    # the analytic model's matrices are small; threads only add contention on 2 cores
    import torch
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model32():
    """The analytic model at 32x32 (fast; the default study uses 64x64)."""
    from convergence.models.analytic import AnalyticModel
    return AnalyticModel(32, 32)


def make_config(tmp_path: Path, **overrides):
    """A validated Config for a small study writing under ``tmp_path``."""
    from convergence.config import to_config
    base = {
        "name": "t",
        "results_dir": str(tmp_path / "results"),
        "prompts": [
            {"topic": "food", "seed": 4053222918, "text": "a hamburger with a bowl of french fries"},
            {"topic": "people", "seed": 2131956332, "text": "Ultra realistic photo"},
        ],
        "seeds_per_prompt": 2,
        "samplers": ["euler", "heun"],
        "steps": [4, 8],
        "cfg": [7.5],
        "width": 32,
        "height": 32,
        "batch_size": 8,
        "progress": False,
    }
    base.update(overrides)
    return to_config(base)


@pytest.fixture
def study_config(tmp_path):
    def build(**overrides):
        return make_config(tmp_path, **overrides)
    return build


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``convergence ARGS`` in a subprocess, as a user would."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "convergence.cli", *args], cwd=cwd or REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


#: CPU flags that decide which kernels torch, MKL and oneDNN run (the test log's header)
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                "amx_tile")
#: environment variables that force kernel variants (tests/e2e/test_kernel_variants.py)
VARIANT_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                     "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _cpu() -> tuple[str, list[str]]:
    """The CPU's model name and its kernel-relevant flags (Linux; else the platform's word)."""
    import platform
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    return fields.get("model name", platform.machine()), [f for f in KERNEL_FLAGS if f in flags]


def pytest_report_header(config):
    """Which CPU and which kernel variants this run used: a test tuned to one CPU shows
    up here before it fails on the next."""
    import torch
    model, flags = _cpu()
    forced = ", ".join(f"{v}={os.environ[v]}" for v in VARIANT_VARIABLES if v in os.environ)
    return [f"cpu: {model} ({os.cpu_count()} logical); flags: {' '.join(flags) or 'unknown'}",
            f"torch {torch.__version__}: ATen CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}; forced: {forced or 'nothing'}"]
