"""Forked store writers that log every cell they compute: how the chaos benchmark and the
concurrency tests count cells computed twice across real processes sharing one study.

The writer is forked after the caller's imports and model are built, so a writer costs a
run, not ~20 s of imports. POSIX only (``os.fork``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from convergence.config.schema import Config
from convergence.models.base import Model


def fork_writer(cfg: Config, model: Model, log: Path) -> int:
    """Fork a process that runs ``cfg`` into its store and appends the hash of every cell
    to ``log`` before computing it; returns the child's pid (exit 0 on success, 1 if the
    run failed, with the reason on stderr)."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        import convergence.run.runner as runner
        real = runner.sample_batch
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

        def logged(m, cells, *args):
            os.write(fd, "".join(f"{c.hash}\n" for c in cells).encode())  # one atomic append
            return real(m, cells, *args)

        runner.sample_batch = logged
        runner.run_study(cfg, model)
    except BaseException as e:  # noqa: BLE001 - report and exit with a status
        print(f"writer {os.getpid()} failed: {type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    os._exit(code)


def wait_writer(pid: int) -> int:
    """The writer's exit code (negative: killed by that signal)."""
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
