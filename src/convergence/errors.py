"""User-facing errors: the CLI prints their message alone, without a traceback."""


class ConvergenceError(Exception):
    """A problem with the user's input or files, explained in one sentence."""
