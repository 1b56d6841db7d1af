"""The worker's scheduler: one thread owns the model and drives the runs of every job the worker
holds through one `ddnm.sampling.Batcher`, so that jobs at different steps share forwards
(continuous batching: a job joins at its next step, one that ends leaves).

It is the one thread of the worker that computes: job threads (Celery's thread pool, one per
held job) hand it their torch work (`call`: loading the model, preparing a job, finishing its
result) and their runs (`follow`), and do the rest themselves: Redis I/O (progress, the cancel
flag), the time limit. (On CPU, torch ops spread over threads run about twice as slow as on one:
each thread that computes gets its own OpenMP team, and the teams contend for the cores.) A run's
step callback only puts its progress into its job's queue, so the scheduler never waits on Redis;
a job that stops (canceled, timed out, worker stopping) is dropped from the batcher at the next
round and its batch-mates go on untouched.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from torch import Tensor

from ddnm.sampling import Batcher, EpsModel, Run, StepInfo

log = logging.getLogger(__name__)
POLL_S = 0.1  # a job thread looks at its run's outcome at least this often
T = TypeVar("T")


@dataclass(frozen=True)
class _Add:
    run: Run
    priority: int
    outcome: Future[Tensor]


@dataclass(frozen=True)
class _Drop:
    outcome: Future[Tensor]


@dataclass(frozen=True)
class _Call:
    fn: Callable[[], Any]
    outcome: Future[Any]


class Scheduler:
    """`start()`, then any thread may `follow` runs; `stop()` ends the thread (live runs fail)."""

    def __init__(self, max_samples: int, eps: EpsModel | None = None) -> None:
        """`eps`: the model's ε-model, or None until `serve` gives it (after loading it here)."""
        self.eps = eps
        self.batcher = Batcher(max_samples)
        self.inbox: queue.SimpleQueue[_Add | _Drop | _Call | None] = queue.SimpleQueue()
        self.outcomes: dict[int, Future[Tensor]] = {}  # batcher handle -> its run's outcome
        self.handles: dict[Future[Tensor], int] = {}
        self.thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.inbox.put(None)
        self.thread.join()

    def serve(self, eps: EpsModel) -> None:
        self.eps = eps

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the scheduler thread (between two forwards); its result, or its raise."""
        outcome: Future[T] = Future()
        self.inbox.put(_Call(partial(fn, *args), outcome))
        return outcome.result()

    def follow(
        self,
        run: Run,
        priority: int,
        steps: queue.SimpleQueue[StepInfo],
        on_step: Callable[[StepInfo], None],
    ) -> Tensor:
        """Drive `run` with the others; on this thread, `on_step` each progress the run puts in
        `steps` (its callback). Returns the run's result; raises what the run or `on_step`
        raised (the run is then dropped)."""
        outcome: Future[Tensor] = Future()
        self.inbox.put(_Add(run, priority, outcome))
        try:
            while True:
                with contextlib.suppress(queue.Empty):
                    on_step(steps.get(timeout=POLL_S))
                if outcome.done() and steps.empty():
                    return outcome.result()
                if not self.thread.is_alive():
                    raise RuntimeError("the worker's scheduler has stopped")
        except BaseException:
            self.inbox.put(_Drop(outcome))
            raise

    def _loop(self) -> None:
        while self._take(block=not self.batcher.live):
            if self.batcher.live:
                self._round()
        for outcome in self.outcomes.values():
            outcome.set_exception(RuntimeError("the worker's scheduler stopped"))

    def _take(self, block: bool) -> bool:
        """Apply what job threads sent (waiting for something when `block`); False on stop."""
        try:
            message = self.inbox.get(block=block)
            while True:
                if message is None:
                    return False
                self._apply(message)
                message = self.inbox.get_nowait()
        except queue.Empty:
            return True

    def _apply(self, message: _Add | _Drop | _Call) -> None:
        if isinstance(message, _Call):
            try:
                message.outcome.set_result(message.fn())
            except BaseException as err:  # handed to the caller's thread
                message.outcome.set_exception(err)
            return
        if isinstance(message, _Drop):
            handle = self.handles.pop(message.outcome, None)
            if handle is not None:
                self.batcher.drop(handle)
                self.outcomes.pop(handle)
            return
        handle, ended = self.batcher.add(message.run, message.priority)
        if ended is None:
            self.outcomes[handle] = message.outcome
            self.handles[message.outcome] = handle
        else:
            _resolve(message.outcome, ended)

    def _round(self) -> None:
        assert self.eps is not None, "runs are followed once the model is served"
        try:
            ended_now = self.batcher.step(self.eps)
        except Exception as err:  # not one run's failure (the batcher isolates those)
            log.exception("a forward failed; the runs in the batcher end with it")
            ended_now = dict.fromkeys(self.batcher.live, err)
            for handle in ended_now:
                self.batcher.drop(handle)
        for handle, ended in ended_now.items():
            outcome = self.outcomes.pop(handle)
            self.handles.pop(outcome)
            _resolve(outcome, ended)


def _resolve(outcome: Future[Tensor], ended: Tensor | BaseException) -> None:
    if isinstance(ended, BaseException):
        outcome.set_exception(ended)
    else:
        outcome.set_result(ended)
