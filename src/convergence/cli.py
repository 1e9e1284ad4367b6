"""The ``convergence`` command: ``run``, ``analyze``, ``report``, ``samplers``.

Entry points only parse and dispatch. Each subcommand is a Hydra app over the configs
shipped in the package (``pkg://convergence.conf``; ``CONVERGENCE_CONF=DIR`` replaces
them), so every key can be overridden, ``--multirun`` sweeps work, and user studies outside
the package come in through ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``. User errors print one line
and exit with status 2, without a traceback.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from convergence.errors import ConvergenceError

#: the package's own configs; found by Hydra as ``pkg://convergence.conf`` so a plain
#: ``pip install`` works in any directory
PACKAGE_CONF = Path(__file__).resolve().parent / "conf"
#: the configs in use: ``CONVERGENCE_CONF`` (a folder) replaces the package's
CONF_DIR = Path(os.environ["CONVERGENCE_CONF"]) if os.environ.get("CONVERGENCE_CONF") else PACKAGE_CONF


def config_path() -> str:
    """Hydra's primary config path: the override folder, else the package's configs."""
    override = os.environ.get("CONVERGENCE_CONF")
    return str(Path(override).resolve()) if override else "pkg://convergence.conf"


def fail(message: str) -> None:
    print(f"convergence: error: {message}", file=sys.stderr)
    sys.exit(2)


def cmd_run(cfg) -> None:
    from convergence.runner import run_study
    summary = run_study(cfg)
    print(f"ran {summary.ran} cells, {summary.skipped} already stored, in {summary.seconds:.1f}s "
          f"-> {summary.store.table_path}")


def cmd_analyze(cfg) -> None:
    from convergence.analysis import analyze_study
    analyze_study(cfg)


def cmd_report(cfg) -> None:
    from convergence.report import write_report
    path = write_report(cfg)
    print(f"report: {path}")


def cmd_all(cfg) -> None:
    cmd_run(cfg)
    cmd_analyze(cfg)
    cmd_report(cfg)


COMMANDS: dict[str, Callable] = {"run": cmd_run, "analyze": cmd_analyze, "report": cmd_report,
                                 "all": cmd_all}


def _hydra_app(task: Callable):
    import hydra
    from omegaconf import DictConfig

    from convergence.config import register_configs, to_config

    register_configs()

    @hydra.main(config_path=config_path(), config_name="config", version_base="1.3")
    def app(dcfg: DictConfig) -> None:
        try:
            cfg = to_config(dcfg)
            if cfg.threads:
                import torch
                torch.set_num_threads(cfg.threads)
            task(cfg)
        except ConvergenceError as e:
            fail(str(e))

    return app


def list_samplers() -> None:
    from convergence.samplers.registry import available_samplers
    from convergence.samplers.schedules import schedule_names
    for name, spec in available_samplers().items():
        kind = "stochastic" if spec.stochastic else "deterministic"
        alias = ", ".join(spec.aliases)
        print(f"{name:22s} {spec.family:12s} {kind:13s} native={spec.native_schedule:12s} {alias}")
    print("schedules:", ", ".join(schedule_names()))


USAGE = """usage: convergence {run,analyze,report,all,samplers} [hydra overrides]

  run       generate the study's images into results/<name>/
  analyze   distances, key points, rates and the guide's claims
  report    grids, curves, tables and results/<name>/report/index.html
  all       run + analyze + report
  samplers  list samplers, aliases and schedules

examples:
  convergence run samplers=[euler,heun] steps=[4,8,16] seeds=[1,2]
  convergence run study=smoke
  convergence run --multirun cfg=[5.0],[7.5]
"""


def main(argv: list[str] | None = None) -> None:
    # k-diffusion imports `clip`, which warns about pkg_resources on every start
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "samplers":
        list_samplers()
        return
    if cmd not in COMMANDS:
        fail(f"unknown command {cmd!r}; use one of: {', '.join([*COMMANDS, 'samplers'])}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.argv = [f"convergence-{cmd}", *rest]
    _hydra_app(COMMANDS[cmd])()


if __name__ == "__main__":
    main()
