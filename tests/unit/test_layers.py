"""The stages import one way and no package holds an import cycle: the import-linter
contracts in pyproject.toml, function-level imports included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

import convergence

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "2 kept, 0 broken" in res.stdout


def test_every_package_has_a_layer():
    """A new package or top-level module cannot sit outside the layer contract."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    root = Path(convergence.__file__).parent
    modules = {f"convergence.{p.stem}" for p in root.glob("*.py") if p.stem != "__init__"}
    packages = {f"convergence.{p.parent.name}" for p in root.glob("*/__init__.py")
                if p.parent.name != "conf"}
    assert modules | packages == named, sorted((modules | packages) ^ named)
