"""Run the `convergence` CLI in-process (much faster than a subprocess per call)."""

from __future__ import annotations

from convergence.cli import main


def main_status(*args: str) -> int:
    """Run the CLI; its exit status (0 when it returns)."""
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of one in-process CLI run."""
    code = main_status(*args)
    out = capsys.readouterr()
    return code, out.out, out.err
