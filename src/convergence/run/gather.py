"""Cross-cell batching: many samplers, one model call.

Each job (one group of cells that share sigmas) runs its sampler, a plain k-diffusion
style function, in a thread of its own. Its model calls go to :class:`Gatherer`, which
waits until every live job is blocked on a call (or finished), evaluates all pending
rows as one model call with a sigma and a conditioning per row, and hands each job its
rows back. So cells of different samplers, step counts, seeds and prompts advance
together, and each model call is as large as the row budget allows.

A cell's result does not depend on which cells shared its calls as long as the model is
row-independent (the analytic model is, to the bit, by construction: ``models.fixed_order``). Jobs
marked ``solo`` (samplers that couple their rows) make their own calls.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from convergence.models.base import DenoiseCall, cat_rows, take_rows

_RUNNING, _WAITING, _DONE = "running", "waiting", "done"


@dataclass
class Job:
    """One unit of work: ``fn(call)`` runs a sampler whose model calls go to ``call``."""

    fn: Callable[[DenoiseCall], Any]
    #: rows this job puts into each model call (cells x 2 with CFG)
    rows: int
    #: make its own model calls (samplers whose rows are coupled)
    solo: bool = False
    payload: Any = None


@dataclass
class Ledger:
    """What one job cost: model calls it took part in, its rows, and its time."""

    calls: int = 0
    rows: int = 0
    #: rows of the gathered calls it took part in (its own and other jobs')
    call_rows: float = 0.0
    #: its share (by rows) of the time inside the model
    model_seconds: float = 0.0
    #: CPU time of its own thread outside the model (sampler maths, decoding)
    own_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.model_seconds + self.own_seconds

    @property
    def rows_per_call(self) -> float:
        return self.call_rows / self.calls if self.calls else 0.0


@dataclass
class CallStats:
    """Device-independent measures of a run: model calls and rows per call."""

    calls: int = 0
    rows: int = 0
    model_seconds: float = 0.0
    #: wall time the gatherer waited for the live jobs' own work between model calls
    #: (sampler arithmetic, prompt encoding, decoding): the model idles meanwhile
    wait_seconds: float = 0.0
    rows_histogram: Counter = field(default_factory=Counter)

    def record(self, rows: int, seconds: float) -> None:
        self.calls += 1
        self.rows += rows
        self.model_seconds += seconds
        self.rows_histogram[rows] += 1

    def add(self, other: CallStats) -> None:
        """Count another gatherer's calls in these statistics."""
        self.calls += other.calls
        self.rows += other.rows
        self.model_seconds += other.model_seconds
        self.wait_seconds += other.wait_seconds
        self.rows_histogram.update(other.rows_histogram)

    def as_dict(self) -> dict:
        return {"model_calls": self.calls, "model_rows": self.rows,
                "rows_per_call": self.rows / self.calls if self.calls else 0.0,
                "model_seconds": self.model_seconds, "wait_seconds": self.wait_seconds,
                "rows_histogram": {str(k): v for k, v in sorted(self.rows_histogram.items())}}


class _Cancelled(BaseException):
    """Raised in a job's thread when the run stops early (an error or an interrupt)."""


class _Worker(threading.Thread):
    def __init__(self, gatherer: Gatherer, job: Job):
        super().__init__(daemon=True, name="convergence-job")
        self.gatherer, self.job = gatherer, job
        self.ledger = Ledger()
        self.state = _RUNNING
        self.request: tuple | None = None
        self.reply: Any = None
        self.result: Any = None
        self.error: BaseException | None = None

    def call(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        cv = self.gatherer.cv
        with cv:
            if self.gatherer.cancelled:
                raise _Cancelled()
            self.request, self.state = (x, sigma, cond), _WAITING
            cv.notify_all()
            cv.wait_for(lambda: self.state == _RUNNING)
            reply, self.reply = self.reply, None
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def run(self) -> None:
        start = time.thread_time()
        try:
            with torch.no_grad():
                self.result = self.job.fn(self.call)
        except _Cancelled:
            pass
        except BaseException as e:  # re-raised by the gatherer in the main thread
            self.error = e
        finally:
            self.ledger.own_seconds = time.thread_time() - start
            with self.gatherer.cv:
                self.state = _DONE
                self.gatherer.cv.notify_all()


class Gatherer:
    """Runs jobs concurrently and merges their model calls, up to ``row_budget`` rows.

    Jobs are admitted in order while their rows fit the budget next to the live ones (a
    job larger than the budget runs alone and its calls are split into budget-sized
    model calls); when jobs finish, the next ones join before the next model call. ``on_done(job, result, ledger)`` runs in the calling thread as each job
    finishes, so results can be stored while the others continue."""

    def __init__(self, denoise: DenoiseCall, row_budget: int,
                 lock: threading.RLock | None = None):
        if row_budget < 1:
            raise ValueError(f"row budget must be >= 1, got {row_budget}")
        self.denoise = denoise
        self.row_budget = int(row_budget)
        self.stats = CallStats()
        self.cv = threading.Condition()
        self.cancelled = False
        #: held during model calls; jobs hold it to encode prompts and decode (models.base.model_lock)
        self.lock = lock or threading.RLock()

    # -- model calls ----------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, requests: list[tuple[Ledger, tuple]]) -> list[torch.Tensor]:
        """All pending rows in one model call (one per ``row_budget`` rows when they do
        not fit); each request gets its rows back, and a share of the time by rows."""
        xs = torch.cat([r[1][0] for r in requests])
        sigmas = torch.cat([r[1][1] for r in requests])
        cond = cat_rows([r[1][2] for r in requests])
        n = xs.shape[0]
        outs, seconds = [], 0.0
        for lo in range(0, n, self.row_budget):
            hi = min(n, lo + self.row_budget)
            part = cond if hi - lo == n else take_rows(cond, lo, hi)
            with self.lock:
                start = time.perf_counter()
                out = self.denoise(xs[lo:hi], sigmas[lo:hi], part)
                if out.device.type == "cuda":
                    torch.cuda.synchronize(out.device)
                dt = time.perf_counter() - start
            self.stats.record(hi - lo, dt)
            seconds += dt
            outs.append(out)
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        parts, lo = [], 0
        for ledger, (x, _, _) in requests:
            k = x.shape[0]
            parts.append(out[lo:lo + k])
            lo += k
            ledger.calls += 1
            ledger.rows += k
            ledger.call_rows += n / len(outs)
            ledger.model_seconds += seconds * k / n
        return parts

    def solo_call(self, ledger: Ledger) -> DenoiseCall:
        """A job's own model calls (no other rows), counted in the same statistics."""

        def call(x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
            return self._evaluate([(ledger, (x, sigma, cond))])[0]

        return call

    # -- scheduling -----------------------------------------------------------------
    def run(self, jobs: Iterable[Job], on_done: Callable[[Job, Any, Ledger], None]) -> CallStats:
        """Run every job; re-raises the first job's error after stopping the others.

        ``jobs`` is read lazily, one job ahead: the next job is taken from it only when
        the live jobs leave rows free (or none is live), so an iterator can claim work on
        demand and new jobs join as soon as finished ones make room, with no pause
        between groups of jobs."""
        source = iter(jobs)
        ahead: list[Job] = []  # the one job taken from ``source`` and not yet started

        def peek() -> Job | None:
            if not ahead:
                ahead.extend(itertools.islice(source, 1))
            return ahead[0] if ahead else None

        live: list[_Worker] = []
        try:
            while True:
                while not live and (job := peek()) is not None and job.solo:
                    self._run_solo(ahead.pop(), on_done)
                used = sum(w.job.rows for w in live)
                while (not live or used < self.row_budget) and (job := peek()) is not None \
                        and not job.solo and (not live or used + job.rows <= self.row_budget):
                    worker = _Worker(self, ahead.pop())
                    live.append(worker)
                    worker.start()
                    used += job.rows
                if not live:  # nothing left: a solo job has run, any other started
                    break
                self._wait_blocked(live)
                done = [w for w in live if w.state == _DONE]
                live = [w for w in live if w.state != _DONE]
                for w in done:  # store the finished ones before reporting an error
                    w.join()
                    if w.error is None:
                        on_done(w.job, w.result, w.ledger)
                errors = [w.error for w in done if w.error is not None]
                if errors:
                    raise errors[0]
                if not done:  # else new jobs take the rows freed first and join this call
                    self._serve(live)
        finally:
            self._cancel(live)
        return self.stats

    def _wait_blocked(self, live: list[_Worker]) -> None:
        """Until every live job waits for a model call or has finished."""
        start = time.perf_counter()
        with self.cv:
            self.cv.wait_for(lambda: all(w.state != _RUNNING for w in live))
        self.stats.wait_seconds += time.perf_counter() - start

    def _run_solo(self, job: Job, on_done: Callable[[Job, Any, Ledger], None]) -> None:
        ledger = Ledger()
        start = time.thread_time()
        with torch.no_grad():
            result = job.fn(self.solo_call(ledger))
        ledger.own_seconds = max(0.0, time.thread_time() - start - ledger.model_seconds)
        on_done(job, result, ledger)

    def _serve(self, waiting: list[_Worker]) -> None:
        outs = self._evaluate([(w.ledger, w.request) for w in waiting])
        with self.cv:
            for w, out in zip(waiting, outs, strict=True):
                w.request, w.reply, w.state = None, out, _RUNNING
            self.cv.notify_all()

    def _cancel(self, live: list[_Worker]) -> None:
        with self.cv:
            self.cancelled = True
            for w in live:
                if w.state == _WAITING:
                    w.request, w.reply, w.state = None, _Cancelled(), _RUNNING
            self.cv.notify_all()
        for w in live:
            w.join()
