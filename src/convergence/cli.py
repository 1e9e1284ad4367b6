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

from convergence.errors import ConvergenceError, NeedsOtherModel

#: the package's own configs; found by Hydra as ``pkg://convergence.conf`` so a plain
#: ``pip install`` works in any directory
PACKAGE_CONF = Path(__file__).resolve().parent / "conf"
#: the configs in use: ``CONVERGENCE_CONF`` (a folder) replaces the package's
CONF_DIR = Path(os.environ["CONVERGENCE_CONF"]) if os.environ.get("CONVERGENCE_CONF") else PACKAGE_CONF


def config_path() -> str:
    """Hydra's primary config path: the override folder, else the package's configs."""
    override = os.environ.get("CONVERGENCE_CONF")
    return str(Path(override).resolve()) if override else "pkg://convergence.conf"


def _quiet_known_warnings() -> None:
    """Installed on import, so launcher workers (which import this module to run a job)
    are as quiet as the main process."""
    # k-diffusion imports `clip`, which warns about pkg_resources on every start
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    # conf/hydra/launcher/*.yaml carry the plugins' names, so Hydra checks them against the
    # plugins' schemas (wanted) and warns that it will stop doing so (they work either way)
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against")


_quiet_known_warnings()


def fail(message: str, code: int = 2) -> None:
    print(f"convergence: error: {message}", file=sys.stderr)
    sys.exit(code)


def cmd_run(cfg) -> None:
    from convergence.runner import run_study
    if cfg.search == "adaptive":
        from convergence.adaptive import run_adaptive as run_study
    summary = run_study(cfg)
    print(f"ran {summary.ran} cells, {summary.skipped} already stored, in {summary.seconds:.1f}s "
          f"-> {summary.store.root}")
    if getattr(summary, "diverged", None):
        print(f"warning: {len(summary.diverged)} cells diverged (|x| above "
              f"{DIVERGENCE_NOTE}), e.g. {summary.store.describe(summary.diverged[0])}; they are "
              "stored with diverged=true", file=sys.stderr)


def cmd_verify(cfg) -> None:
    from convergence.verify import verify_study
    problems = verify_study(cfg)
    if problems:
        sys.exit(1)


def cmd_compact(cfg) -> None:
    from convergence.runner import study_root
    from convergence.store import Store
    store = Store(study_root(cfg))
    if not store.exists():
        raise ConvergenceError(f"no results in {store.root}: nothing to compact")
    rows, parts = store.compact()
    print(f"{store.root}: {rows} cells; folded {parts} part files into {store.table_path.name}")


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
                                 "all": cmd_all, "verify": cmd_verify}
#: ``convergence store SUBCOMMAND``
STORE_COMMANDS: dict[str, Callable] = {"compact": cmd_compact}
#: what "diverged" means, for the warning (runner.DIVERGENCE_FACTOR x the data's scale ~1)
DIVERGENCE_NOTE = "1e3 times the data's scale"


def _hydra_app(task: Callable):
    import hydra
    from omegaconf import DictConfig

    from convergence.config import register_configs, to_config
    from convergence.worker import assign_device

    register_configs()

    @hydra.main(config_path=config_path(), config_name="config", version_base="1.3")
    def app(dcfg: DictConfig) -> None:
        try:
            cfg = to_config(dcfg)
            cfg.model.device = assign_device(cfg.model.device)
            if cfg.threads:
                import torch
                torch.set_num_threads(cfg.threads)
            task(cfg)
        except Exception as e:  # past Hydra's job runner, which would print its own line
            raise _JobFailed(e) from e

    return app


class _JobFailed(BaseException):
    """Carries a job's exception out of Hydra untouched."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _run_app(task: Callable, overrides: list[str], debug: bool) -> None:
    """Run a Hydra app; any failure becomes one line and an exit status (failures.py),
    or, with ``--debug`` / HYDRA_FULL_ERROR=1, the full traceback."""
    from convergence.config import check_name_overrides
    from convergence.failures import explain
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own report
    try:
        check_name_overrides(overrides)  # before Hydra creates any folder named after it
        _hydra_app(task)()
    except SystemExit:
        raise
    except BaseException as e:
        error = e.error if isinstance(e, _JobFailed) else e
        if debug:
            raise error from None
        fail(*explain(error, overrides))
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def compose_config(overrides: list[str]):
    """A validated Config from Hydra overrides without a Hydra app (``convergence bench``)."""
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from convergence.config import register_configs, to_config

    register_configs()
    override = os.environ.get("CONVERGENCE_CONF")
    init = (initialize_config_dir(str(Path(override).resolve()), version_base="1.3") if override
            else initialize_config_module("convergence.conf", version_base="1.3"))
    try:
        with init:
            cfg = to_config(compose("config", overrides=list(overrides)))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConvergenceError(str(e).strip().splitlines()[0]) from None
    if cfg.threads:
        import torch
        torch.set_num_threads(cfg.threads)
    return cfg


def list_samplers() -> None:
    from convergence.samplers.registry import available_samplers
    from convergence.samplers.schedules import schedule_names
    for name, spec in available_samplers().items():
        kind = "stochastic" if spec.stochastic else "deterministic"
        alias = ", ".join(dict.fromkeys(a for a in spec.aliases if a.lower() != name.lower()))
        nfe = "adaptive" if spec.nfe_per_step is None else (
            f"{spec.nfe_per_step:g}/step" + (f"{spec.nfe_offset:+d}" if spec.nfe_offset else ""))
        order = "-" if spec.order is None else f"{spec.order:g}"
        print(f"{name:22s} {spec.family:12s} {kind:13s} order={order:3s} nfe={nfe:10s} "
              f"native={spec.native_schedule:12s} {alias}")
    print("schedules:", ", ".join(schedule_names()))


class _Args:
    """argparse whose errors are the one-line ``convergence: error:`` of every command."""

    @staticmethod
    def parser(prog: str, description: str):
        import argparse

        class Parser(argparse.ArgumentParser):
            def error(self, message: str) -> None:  # type: ignore[override]
                fail(f"{prog}: {message}")

        p = Parser(prog=f"convergence {prog}", description=description)
        p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                       help="import MODULE first (it registers samplers); repeatable")
        return p


def _check_parser():
    p = _Args.parser("check", "Check a sampler against its claims and its baseline on a small "
                     "fixed study of the analytic model (docs/plugins.md). Exit status: 0 "
                     "passed, 1 a check failed, 2 bad input.")
    p.add_argument("sampler", help="a registered name, module:function, or a {_target_: ...} node")
    p.add_argument("--baseline", help="baseline file (default: results/baselines/NAME.json "
                   "when it exists)")
    p.add_argument("--no-baseline", action="store_true", help="check the claims only")
    p.add_argument("--order", type=float, help="claimed order (overrides the registered one)")
    p.add_argument("--nfe-per-step", type=float, help="claimed model calls per step")
    p.add_argument("--nfe-offset", type=int, help="claimed extra calls per image")
    return p


def _claims(args) -> dict:
    return {k: v for k, v in (("order", args.order), ("nfe_per_step", args.nfe_per_step),
                              ("nfe_offset", args.nfe_offset)) if v is not None}


def _sampler_arg(text: str):
    """A name, or a ``{_target_: ...}`` node written inline (YAML flow mapping)."""
    if text.lstrip().startswith("{"):
        from omegaconf import OmegaConf
        try:
            return OmegaConf.to_container(OmegaConf.create(text))
        except Exception as e:  # OmegaConf's YAML errors have several types
            raise ConvergenceError(f"cannot parse sampler node {text!r}: {e}") from None
    return text


def cmd_check(argv: list[str]) -> int:
    from convergence import baseline
    from convergence.check import check_sampler
    from convergence.registry import import_plugins
    args = _check_parser().parse_args(argv)
    import_plugins(args.plugin)
    from convergence.check import resolve_for_check
    spec = resolve_for_check(_sampler_arg(args.sampler))
    base = None
    if not args.no_baseline:
        path = Path(args.baseline) if args.baseline else baseline.baseline_path(spec.name)
        if args.baseline or path.exists():
            base = baseline.load(path)
            if base.sampler != spec.name:
                raise ConvergenceError(f"baseline {str(path)!r} is for {base.sampler!r}, "
                                       f"not {spec.name!r}")
    report = check_sampler(spec.name, base, **_claims(args))
    print(report.table())
    print(report.summary())
    return 0 if report.passed else 1


def cmd_baseline(argv: list[str]) -> int:
    from convergence import baseline
    from convergence.check import check_sampler
    from convergence.registry import import_plugins
    p = _Args.parser("baseline", "Save what `convergence check` measures as the baseline of "
                     "SAMPLER (only after its claims pass, unless --force).")
    p.add_argument("action", choices=["save"])
    p.add_argument("samplers", nargs="+", help="sampler names, or 'all' for every registered one")
    p.add_argument("--dir", help="folder (default: results/baselines, or $CONVERGENCE_BASELINES)")
    p.add_argument("--force", action="store_true", help="save even when a claim fails")
    args = p.parse_args(argv)
    import_plugins(args.plugin)
    names = args.samplers
    every = names == ["all"]
    if every:
        from convergence.samplers.registry import available_samplers
        names = list(available_samplers())
    status = 0
    for name in names:
        try:
            report = check_sampler(_sampler_arg(name))
        except NeedsOtherModel as e:   # `all`: a flow-only scheduler has no check to save
            print(f"{'skipped' if every else 'not saved'}: {name}: {e}")
            status = status if every else 1
            continue
        except ConvergenceError as e:   # one bad sampler does not stop `all`
            print(f"not saved: {name}: {e}")
            status = 1
            continue
        if not report.passed and not args.force:
            print(report.table())
            print(f"not saved: {report.summary()} (use --force to save anyway)")
            status = 1
            continue
        path = baseline.save(report.measurement, baseline.baseline_path(
            report.spec.name, Path(args.dir) if args.dir else None))
        print(f"saved {path}")
    return status


USAGE = """usage: convergence {run,analyze,report,all,verify,samplers,bench,check,baseline} [options]
       convergence store compact [hydra overrides]

  run       generate the study's images into results/<name>/
  analyze   distances, key points, rates and the guide's claims
  report    grids, curves, tables and results/<name>/report/index.html
  all       run + analyze + report
  verify    check every stored cell's files against their sha256 (exit 1 if any problem)
  store compact   fold the part files of concurrent writers into cells.parquet
  samplers  list samplers (claims, aliases) and schedules
  bench     the study's speed vs the device's floor, a per-cell and a direct loop (ratios)
  check     check a sampler against its claims and baseline (exit 1 on a regression)
  baseline  `baseline save SAMPLER|all`: store what `check` measures

examples:
  convergence run samplers=[euler,heun] steps=[4,8,16] seeds=[1,2]
  convergence run study=smoke
  convergence run --multirun cfg=[5.0],[7.5]
  convergence check dpmpp_2m
  convergence check my_pkg.samplers:sample_mine --order 2 --no-baseline
  convergence run --debug ...   (a failure shows its full traceback)

exit status of run/analyze/report/verify/store: 0 done, 1 verify found problems, 2 bad input
or damaged file (one line; nothing stored is lost), 3 internal error (--debug shows the
traceback), 130 interrupted (the same command again resumes)
"""


#: subcommands with their own options (not Hydra apps)
PLAIN: dict[str, Callable[[list[str]], int]] = {"check": cmd_check, "baseline": cmd_baseline}


def torch_threads_from_env() -> None:
    """The check study is tiny: one thread unless OMP_NUM_THREADS says otherwise (threads
    only add contention on such small matrices)."""
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if debug:
        os.environ["CONVERGENCE_DEBUG"] = "1"  # libraries keep their own log lines too
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "samplers":
        list_samplers()
        return
    if cmd == "bench":
        from convergence.bench import main as bench_main
        bench_main(rest)
        return
    if cmd in PLAIN:
        torch_threads_from_env()
        try:
            code = PLAIN[cmd](rest)
        except ConvergenceError as e:
            fail(str(e))
        sys.exit(code)
    if cmd == "store":
        sub = rest[0] if rest else ""
        if sub not in STORE_COMMANDS:
            fail(f"unknown store command {sub!r}; use one of: {', '.join(STORE_COMMANDS)}")
        task, cmd, rest = STORE_COMMANDS[sub], f"store-{sub}", rest[1:]
    elif cmd in COMMANDS:
        task = COMMANDS[cmd]
    else:
        fail(f"unknown command {cmd!r}; use one of: "
             f"{', '.join([*COMMANDS, 'store', 'samplers', 'bench', *PLAIN])}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.argv = [f"convergence-{cmd}", *rest]
    _run_app(task, rest, debug)


if __name__ == "__main__":
    main()
