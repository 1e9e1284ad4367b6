"""Every failure a user can cause, as one line and an exit status.

Hydra and OmegaConf explain a bad override over several lines (and a full-stack hint);
:func:`explain` turns those, our own errors, a full disk, a read-only folder and Ctrl-C
into ``(message, exit status)``. Exit statuses: 0 done, 1 ``verify`` found problems,
2 bad input or damaged file (nothing stored is lost), 3 an internal error (a bug: rerun
with ``--debug`` for the traceback), 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import errno
import re

from convergence.config.schema import Config
from convergence.core.errors import ConvergenceError

OK, PROBLEMS, USER, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 130


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _keys_of(path: str) -> list[str] | None:
    """Valid keys beside the dotted ``path`` in the structured config (None: free-form)."""
    node: object = Config
    for part in path.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return None
        f = fields[part]
        node = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if not dataclasses.is_dataclass(node):
        return None
    return [f.name for f in dataclasses.fields(node)]


def _bad_override(overrides: list[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except Exception:
            return o
    return None


def _hydra(e: BaseException, overrides: list[str]) -> str | None:
    """One line for Hydra's own composition and parse errors (None: not one of them)."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    text = str(e)
    if isinstance(e, MissingConfigException):
        m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
        if m:
            group, name = m.groups()
            options = [o for o in re.findall(r"^\t(\S+)$", text, re.M) if not o.startswith("base_")]
            return f"unknown {group} {name!r}; use one of: {', '.join(options)}"
        m = re.search(r"Cannot find primary config '([^']+)'", text)
        return one_line(text.split("\n")[0]) if m is None else (
            f"no config {m.group(1)!r} in the config path; check --config-dir / CONVERGENCE_CONF")
    if isinstance(e, OverrideParseException):
        bad = _bad_override(overrides)
        return (f"cannot parse override {bad!r} ({one_line(text.splitlines()[0])}); write key=value, "
                "lists as key=[a,b], and quote values with spaces or brackets")
    if not isinstance(e, HydraException):
        return None
    cause = str(e.__cause__ or "")
    key = re.search(r"full_key: (\S+)", cause)
    m = re.match(r"Could not override '([^']+)'", text)
    if m:
        keys = _keys_of(m.group(1))
        valid = f"; valid keys there: {', '.join(keys)}" if keys else ""
        return f"unknown key {m.group(1)!r}{valid}"
    m = re.match(r"Error merging override (.+)", text)
    if m:
        why = cause.splitlines()[0] if cause else "invalid value"
        where = f" (at {key.group(1)})" if key else ""
        return f"bad value in {m.group(1)!r}: {why}{where}"
    return one_line(text.splitlines()[0] if text else type(e).__name__)


def _omegaconf(e: BaseException) -> str | None:
    from omegaconf.errors import OmegaConfBaseException
    if not isinstance(e, OmegaConfBaseException):
        return None
    text = str(e)
    key = re.search(r"full_key: (\S+)", text)
    where = f" (at {key.group(1)})" if key else ""
    return f"invalid configuration: {text.splitlines()[0]}{where}"


def _oserror(e: OSError) -> str | None:
    where = f" {e.filename}" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device writing{where}: free some space and run the same "
                "command again (stored cells are kept)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write{where} ({e.strerror}): the results folder is not writable; fix its "
                "permissions or choose another with results_dir=PATH")
    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EIO):
        return f"{e.strerror}:{where}"
    return None


#: setup errors of Hydra's command line and of the launchers' own libraries, by the text
#: those libraries raise (their types are generic): (type, text in the message, our line)
SETUP_ERRORS = (
    (ValueError, "Only one of --run, --multirun, --cfg",
     "give only one of --run, --multirun, --cfg, --info and --shell-completion"),
    (ConnectionError, "Could not find any running Ray instance",
     "hydra.launcher.ray.init.address=auto found no running Ray cluster: start one (`ray start "
     "--head`) or leave init.address null for a Ray on this machine"),
    (RuntimeError, 'Could not detect "srun"',
     "hydra/launcher=submitit_slurm needs SLURM (no `srun` on this machine): run it on a SLURM "
     "login node, or use hydra/launcher=submitit_local or joblib here"),
)


def _setup(e: BaseException) -> str | None:
    text = str(e)
    for kind, marker, line in SETUP_ERRORS:
        if isinstance(e, kind) and marker in text:
            return line
    return None


def explain(e: BaseException, overrides: list[str]) -> tuple[str, int]:
    """(one-line message, exit status) for an exception that ended a command."""
    if isinstance(e, ConvergenceError):
        return one_line(str(e)), e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return ("interrupted: files already written are kept and outputs being rebuilt were left "
                "as they were; run the same command again", INTERRUPTED)
    msg = _hydra(e, overrides) or _omegaconf(e) or _setup(e)
    if msg:
        return one_line(msg), USER
    if isinstance(e, OSError):
        msg = _oserror(e)
        if msg:
            return one_line(msg), USER
    return (f"internal error: {type(e).__name__}: {one_line(str(e))[:300]} (a bug, please report "
            "it; run with --debug for the traceback)", INTERNAL)
