"""User-facing errors: the CLI prints their message alone, without a traceback, and
exits with their ``exit_code`` (README "When things go wrong" lists the codes)."""


class ConvergenceError(Exception):
    """A problem with the user's input or files, explained in one sentence."""

    exit_code = 2


class Interrupted(ConvergenceError):
    """Ctrl-C: what was stored is kept; the message says how to resume."""

    exit_code = 130


class NeedsOtherModel(ConvergenceError):
    """A sampler that runs only on another kind of model (a flow-matching scheduler on a
    DDPM-trained one, or the reverse): ``convergence baseline save all`` skips it."""
