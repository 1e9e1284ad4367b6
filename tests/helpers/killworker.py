"""A Hydra callback that SIGKILLs one launcher worker in the middle of its job.

Used by tests/e2e/test_scale.py through ``+hydra.callbacks.kill._target_=killworker.KillOnce``:
Hydra runs ``on_job_start`` inside each worker process, where this patches the analytic
model's denoiser to kill its own process at the ``after``-th call. Only the first worker to
get there dies (an exclusively created marker file says who), so the launch loses one job
mid-batch, as when a node dies or a job is pre-empted."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from hydra.experimental.callback import Callback


class KillOnce(Callback):
    def __init__(self, marker: str, after: int) -> None:
        self.marker = Path(marker)
        self.after = int(after)

    def on_job_start(self, config, **kwargs) -> None:
        from convergence.models.analytic import AnalyticModel
        real = AnalyticModel.denoise
        if getattr(real, "_kill_once", False):
            return
        calls = {"n": 0}
        marker, after = self.marker, self.after

        def denoise(model, *args, **kw):
            calls["n"] += 1
            if calls["n"] == after:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(model, *args, **kw)

        denoise._kill_once = True  # type: ignore[attr-defined]
        AnalyticModel.denoise = denoise  # type: ignore[method-assign]
