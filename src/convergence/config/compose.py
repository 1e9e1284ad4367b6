"""Where the configs come from, and the one way a command turns them into a Config.

The package ships its configs (``pkg://convergence.conf``, so a plain ``pip install``
works anywhere); ``CONVERGENCE_CONF=DIR`` replaces them (read here, once). Hydra commands
(``run``, ``analyze``, ...) compose through ``hydra.main`` so that ``--multirun`` and the
launchers work; every other caller (``bench``, ``check``, tests, benchmarks) composes the
same configs with :func:`compose_config`. Both end in :func:`ready`: validation, then the
process-wide settings a config carries (torch's threads).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from convergence.config.schema import Config, ModelConfig, structured
from convergence.config.validate import to_config
from convergence.core.errors import ConvergenceError

#: the package's own configs
PACKAGE_CONF = Path(__file__).resolve().parents[1] / "conf"
#: ``CONVERGENCE_CONF``: a folder of configs that replaces the package's
CONF_OVERRIDE = os.environ.get("CONVERGENCE_CONF") or None
#: the configs in use
CONF_DIR = Path(CONF_OVERRIDE).resolve() if CONF_OVERRIDE else PACKAGE_CONF


def config_path() -> str:
    """Hydra's primary config path: the override folder, else the package's configs."""
    if CONF_OVERRIDE:
        _check_conf_dir()
        return str(CONF_DIR)
    return "pkg://convergence.conf"


def _check_conf_dir() -> None:
    """A CONVERGENCE_CONF that is no folder of configs: one line naming it (Hydra's own
    message names neither the variable nor the path)."""
    if not CONF_DIR.is_dir():
        raise ConvergenceError(f"CONVERGENCE_CONF={CONF_OVERRIDE!r}: {CONF_DIR} is not a folder; "
                               "point it at a folder holding config.yaml, or unset it to use "
                               "the package's configs")
    if not (CONF_DIR / "config.yaml").is_file():
        raise ConvergenceError(f"CONVERGENCE_CONF={CONF_OVERRIDE!r}: {CONF_DIR} has no config.yaml; "
                               "point it at a folder of configs, or unset it to use the "
                               "package's configs")


def register_configs() -> None:
    """The schema Hydra checks the YAML files against."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=structured(Config))
    cs.store(group="model", name="base_model", node=structured(ModelConfig))


def ready(cfg: DictConfig | dict) -> Config:
    """The validated Config, with its process-wide settings applied (torch's threads)."""
    obj = to_config(cfg)
    if obj.threads:
        torch.set_num_threads(obj.threads)
    return obj


def compose_config(overrides: list[str]) -> Config:
    """A ready Config from Hydra overrides, without a Hydra app."""
    register_configs()
    if CONF_OVERRIDE:
        _check_conf_dir()
    init = (initialize_config_dir(str(CONF_DIR), version_base="1.3") if CONF_OVERRIDE
            else initialize_config_module("convergence.conf", version_base="1.3"))
    try:
        with init:
            raw = compose("config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConvergenceError(str(e).strip().splitlines()[0]) from None
    return ready(raw)
