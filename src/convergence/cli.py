"""The ``convergence`` command: it parses, then dispatches through one table.

Study commands (``run``, ``analyze``, ``report``, ``all``, ``verify``, ``store compact``)
are Hydra apps over the configs (:mod:`convergence.config.compose`), so every key can be
overridden, ``--multirun`` sweeps work, and user studies outside the package come in
through ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``. Tool commands
(``check``, ``baseline``, ``bench``, ``samplers``) take their own options. A user error is
one line and an exit status (:mod:`convergence.failures`), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convergence.core.errors import ConvergenceError, NeedsOtherModel


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


# -- study commands (Hydra apps) ---------------------------------------------------------
#: what "diverged" means, for the warning (runner.DIVERGENCE_FACTOR x the data's scale ~1)
DIVERGENCE_NOTE = "1e3 times the data's scale"


def cmd_run(cfg) -> None:
    from convergence.run.runner import run_study
    if cfg.search == "adaptive":
        from convergence.analysis.adaptive import KeyPointJudge
        from convergence.run.adaptive import run_adaptive
        summary = run_adaptive(cfg, KeyPointJudge(cfg.analysis))
    else:
        summary = run_study(cfg)
    print(f"ran {summary.ran} cells, {summary.skipped} already stored, in {summary.seconds:.1f}s "
          f"-> {summary.store.root}")
    if getattr(summary, "diverged", None):
        print(f"warning: {len(summary.diverged)} cells diverged (|x| above "
              f"{DIVERGENCE_NOTE}), e.g. {summary.store.describe(summary.diverged[0])}; they are "
              "stored with diverged=true", file=sys.stderr)


def cmd_analyze(cfg) -> None:
    from convergence.analysis import analyze_study
    analyze_study(cfg)


def cmd_report(cfg) -> None:
    from convergence.report import write_report
    print(f"report: {write_report(cfg)}")


def cmd_all(cfg) -> None:
    cmd_run(cfg)
    cmd_analyze(cfg)
    cmd_report(cfg)


def cmd_verify(cfg) -> None:
    from convergence.tools.verify import verify_study
    if verify_study(cfg):
        sys.exit(1)


def cmd_compact(cfg) -> None:
    from convergence.core.store import Store
    store = Store(cfg.study_dir())
    if not store.exists():
        raise ConvergenceError(f"no results in {store.root}: nothing to compact")
    rows, parts = store.compact()
    print(f"{store.root}: {rows} cells; folded {parts} part files into {store.table_path.name}")


def _hydra_app(task: Callable):
    import hydra
    from omegaconf import DictConfig

    from convergence.config.compose import config_path, ready, register_configs
    from convergence.run.gpu import assign_device

    register_configs()

    @hydra.main(config_path=config_path(), config_name="config", version_base="1.3")
    def app(dcfg: DictConfig) -> None:
        try:
            cfg = ready(dcfg)
            cfg.model.device = assign_device(cfg.model.device)
            task(cfg)
        except Exception as e:  # past Hydra's job runner, which would print its own line
            raise _JobFailed(e) from e

    return app


class _JobFailed(Exception):
    """Carries a job's exception out of Hydra. An Exception, not a BaseException: the
    launchers' workers (submitit, Ray) catch ``Exception`` and hand it back as the job's
    result, where Hydra re-raises it in the launching process. Pickled by its message
    and exit code alone (the error it wraps may not pickle)."""

    def __init__(self, error: BaseException | str, exit_code: int | None = None):
        super().__init__(str(error))
        self.error = error
        self.exit_code = exit_code if exit_code is not None else getattr(error, "exit_code", None)

    def __reduce__(self):
        from convergence.failures import explain
        message, code = explain(self.error, []) if isinstance(self.error, BaseException) else (
            str(self.error), self.exit_code)
        return (_JobFailed, (message, code))

    def user_error(self) -> BaseException:
        """The error as this process can explain it (an unpickled one: a ConvergenceError
        with the worker's line and exit code)."""
        if isinstance(self.error, BaseException):
            return self.error
        error = ConvergenceError(str(self.error))
        error.exit_code = self.exit_code if self.exit_code is not None else 2
        return error


def _job_failure(e: BaseException) -> BaseException:
    """The job's own error inside what Hydra or a launcher raised (itself if none)."""
    seen = e
    while seen is not None:
        if isinstance(seen, _JobFailed):
            return seen.user_error()
        seen = seen.__cause__ or seen.__context__
    return e


class _DropHydraJobLine:
    """stderr without Hydra's "Error executing job with overrides" line: the job's own
    one-line error follows it."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides:"):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


#: ``verify`` reads only: no Hydra output folder, no log file (it works on a read-only store)
READ_ONLY = ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=disabled",
             "hydra/hydra_logging=disabled"]


def check_launcher(overrides: list[str]) -> None:
    """Refuse a launcher request that would hang instead of failing: Ray waits forever for
    a GPU no node of a local Ray has."""
    values = dict(o.split("=", 1) for o in overrides if "=" in o)
    if values.get("hydra/launcher") != "ray":
        return
    gpus = values.get("hydra.launcher.ray.remote.num_gpus", "0")
    address = values.get("hydra.launcher.ray.init.address", "null")
    try:
        wanted = float(gpus)
    except ValueError:
        raise ConvergenceError(f"hydra.launcher.ray.remote.num_gpus={gpus!r} is not a number") from None
    if wanted > 0 and address in ("null", "None", "", "local"):
        import torch
        have = torch.cuda.device_count()
        if have < wanted:
            raise ConvergenceError(
                f"hydra.launcher.ray.remote.num_gpus={gpus} asks a GPU of each task, but the local "
                f"Ray this starts (init.address null) has {have}: Ray would wait forever; use "
                "num_gpus=0 here, or join a GPU cluster with hydra.launcher.ray.init.address=auto")


def _run_hydra(name: str, task: Callable, overrides: list[str], debug: bool) -> int:
    """Run a Hydra app; any failure becomes one line and an exit status (failures.py),
    or, with ``--debug`` / HYDRA_FULL_ERROR=1, the full traceback."""
    from convergence.config.validate import validate_name_overrides
    from convergence.failures import explain
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own report
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    extra = READ_ONLY if name == "verify" else []
    sys.argv = [f"convergence-{name.replace(' ', '-')}", *extra, *overrides]
    stderr = sys.stderr
    try:
        validate_name_overrides(overrides)  # before Hydra creates any folder named after it
        check_launcher(overrides)
        sys.stderr = _DropHydraJobLine(stderr)
        _hydra_app(task)()
    except SystemExit:
        raise
    except BaseException as e:
        sys.stderr = stderr
        error = _job_failure(e)
        if debug:
            raise error from None
        fail(*explain(error, overrides))
    finally:
        sys.stderr = stderr
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before
    return 0


# -- tool commands (their own options) -----------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse whose errors are the one-line ``convergence: error:`` of every command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(f"{self.prog.removeprefix('convergence ')}: {message}")


def _parser(name: str, description: str, plugins: bool = True) -> _Parser:
    p = _Parser(prog=f"convergence {name}", description=description)
    if plugins:
        p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                       help="import MODULE first (it registers samplers); repeatable")
    return p


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
    from convergence.core.registry import import_plugins
    from convergence.tools import baseline
    from convergence.tools.check import check_sampler, model_overrides, resolve_for_check
    p = _parser("check", "Check a sampler against its claims and its baseline on a small "
                "fixed study of the analytic model, or of --model and KEY=VALUE overrides "
                "(docs/plugins.md). Exit status: 0 passed, 1 a check failed, 2 bad input.")
    p.add_argument("sampler", help="a registered name, module:function, or a {_target_: ...} node")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides of the check study, e.g. model.params.sigma_min=0.01")
    p.add_argument("--model", help="the model to check on: a registered name, a model/NAME.yaml "
                   "config or module:factory (default: the analytic model)")
    p.add_argument("--baseline", help="baseline file (default: results/baselines/NAME.json "
                   "when it exists)")
    p.add_argument("--no-baseline", action="store_true", help="check the claims only")
    p.add_argument("--order", type=float, help="claimed order (overrides the registered one)")
    p.add_argument("--nfe-per-step", type=float, help="claimed model calls per step")
    p.add_argument("--nfe-offset", type=int, help="claimed extra calls per image")
    args = p.parse_intermixed_args(argv)   # overrides before or after the options
    import_plugins(args.plugin)
    spec = resolve_for_check(_sampler_arg(args.sampler))
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ConvergenceError(f"check: {bad[0]!r} is not an override; give KEY=VALUE, e.g. "
                               "model.params.sigma_min=0.01")
    overrides = model_overrides(args.model) + list(args.overrides)
    base = None
    if not args.no_baseline and (args.baseline or not overrides):
        path = Path(args.baseline) if args.baseline else baseline.baseline_path(spec.name)
        if args.baseline or path.exists():
            base = baseline.load(path)
            if base.sampler != spec.name:
                raise ConvergenceError(f"baseline {str(path)!r} is for {base.sampler!r}, "
                                       f"not {spec.name!r}")
    claims = {k: v for k, v in (("order", args.order), ("nfe_per_step", args.nfe_per_step),
                                ("nfe_offset", args.nfe_offset)) if v is not None}
    report = check_sampler(spec.name, base, overrides, **claims)
    print(report.table())
    print(report.summary())
    return 0 if report.passed else 1


def cmd_baseline(argv: list[str]) -> int:
    from convergence.core.registry import import_plugins
    from convergence.samplers.spec import available_samplers
    from convergence.tools import baseline
    from convergence.tools.check import check_sampler
    p = _parser("baseline", "Save what `convergence check` measures as the baseline of "
                "SAMPLER (only after its claims pass, unless --force).")
    p.add_argument("action", choices=["save"])
    p.add_argument("samplers", nargs="+", help="sampler names, or 'all' for every registered one")
    p.add_argument("--dir", help="folder (default: results/baselines, or $CONVERGENCE_BASELINES)")
    p.add_argument("--force", action="store_true", help="save even when a claim fails")
    args = p.parse_args(argv)
    import_plugins(args.plugin)
    every = args.samplers == ["all"]
    names = list(available_samplers()) if every else args.samplers
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


def cmd_bench(argv: list[str]) -> int:
    from convergence.config.compose import compose_config
    from convergence.tools.bench import CLOCKS, bench_report
    p = _parser("bench", "The study's speed against the device's floor, a per-cell and a "
                "direct loop, as ratios of one run (docs/batching.md).", plugins=False)
    p.add_argument("--out", help="also write the report to this file")
    p.add_argument("--loop-cells", type=int, default=None,
                   help="time the per-cell and direct loops on this many cells (scaled)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each floor timing")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or the process's CPU time (CPU devices; a shared machine)")
    args, overrides = p.parse_known_args(argv)
    text = bench_report(compose_config(overrides), argv, loop_cells=args.loop_cells,
                        repeats=args.repeats, clock=args.clock)
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def cmd_samplers(argv: list[str]) -> int:
    from convergence.samplers.apps import APPS
    from convergence.samplers.schedules import schedule_names
    from convergence.samplers.spec import available_samplers, sampler_names
    p = _parser("samplers", "List every sampler name you can type: the app it comes from, "
                "what it runs (k-diffusion backend | diffusers backend where different) and "
                "the schedule it fixes; then the samplers' claims and the schedules.",
                plugins=False)
    p.add_argument("--app", choices=APPS, help="only the names of this app")
    args = p.parse_args(argv)
    print(f"{'name':34s} {'app':22s} {'schedule':11s} runs")
    for row in sampler_names():
        if args.app and args.app not in row.apps:
            continue
        runs = row.runs if row.runs == row.runs_diffusers else f"{row.runs} | {row.runs_diffusers}"
        # no app: another spelling of a registered name (guides, older app versions)
        print(f"{row.name:34s} {','.join(row.apps) or 'alias':22s} {row.schedule or '-':11s} {runs}")
    if args.app:
        return 0
    print()
    for name, spec in available_samplers().items():
        kind = "stochastic" if spec.stochastic else "deterministic"
        nfe = "adaptive" if spec.nfe_per_step is None else (
            f"{spec.nfe_per_step:g}/step" + (f"{spec.nfe_offset:+d}" if spec.nfe_offset else ""))
        order = "-" if spec.order is None else f"{spec.order:g}"
        print(f"{name:34s} {spec.family:12s} {kind:13s} order={order:3s} nfe={nfe:10s} "
              f"native={spec.native_schedule}")
    print("schedules:", ", ".join(schedule_names()))
    return 0


# -- the one table -------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    #: a study command gets the composed Config; a tool command its own argv
    run: Callable
    study: bool = True


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("run", "generate the study's images into results/<name>/", cmd_run),
    Command("analyze", "distances, key points, rates and the guide's claims", cmd_analyze),
    Command("report", "grids, curves, tables and results/<name>/report/index.html", cmd_report),
    Command("all", "run + analyze + report", cmd_all),
    Command("verify", "check every stored cell's files against their sha256 (exit 1 if any "
            "problem)", cmd_verify),
    Command("store compact", "fold the part files of concurrent writers into cells.parquet",
            cmd_compact),
    Command("samplers", "list samplers (claims, aliases) and schedules", cmd_samplers, False),
    Command("bench", "the study's speed vs the device's floor, a per-cell and a direct loop "
            "(ratios)", cmd_bench, False),
    Command("check", "check a sampler against its claims and baseline (exit 1 on a "
            "regression)", cmd_check, False),
    Command("baseline", "`baseline save SAMPLER|all`: store what `check` measures", cmd_baseline,
            False),
)}

USAGE = ("usage: convergence {" + ",".join(n for n in COMMANDS if " " not in n)
         + "} [options]\n       convergence store compact [hydra overrides]\n\n"
         + "\n".join(f"  {c.name:15s} {c.summary}" for c in COMMANDS.values()) + """

examples:
  convergence run samplers=[euler,heun] steps=[4,8,16] seeds=[1,2]
  convergence run study=smoke
  convergence run --multirun cfg=[5.0],[7.5]
  convergence check dpmpp_2m
  convergence check my_pkg.samplers:sample_mine --order 2 --no-baseline
  convergence run --debug ...   (a failure shows its full traceback)

exit status: 0 done, 1 verify or check found problems, 2 bad input or damaged file (one line;
nothing stored is lost), 3 internal error (--debug shows the traceback), 130 interrupted (the
same command again resumes)
""")


def _lookup(argv: list[str]) -> tuple[Command, list[str]]:
    """The command named by the first one or two words, and the rest of the line."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return COMMANDS[name], argv[words:]
    if argv[0] == "store":
        sub = argv[1] if len(argv) > 1 else ""
        fail(f"unknown store command {sub!r}; use one of: "
             + ", ".join(n.split()[1] for n in COMMANDS if n.startswith("store ")))
    fail(f"unknown command {argv[0]!r}; use one of: "
         + ", ".join(dict.fromkeys(n.split()[0] for n in COMMANDS)))
    raise AssertionError  # fail() exits


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if debug:
        os.environ["CONVERGENCE_DEBUG"] = "1"  # libraries keep their own log lines too
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = _lookup(argv)
    if command.study:
        sys.exit(_run_hydra(command.name, command.run, rest, debug))
    try:
        code = command.run(rest)
    except ConvergenceError as e:
        if debug:
            raise
        fail(str(e))
    sys.exit(code)


if __name__ == "__main__":
    main()
