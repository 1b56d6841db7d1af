"""The worker's side of the job records (layout in `contract.jobs`): one attempt at a job, from
`running` to `succeeded`, `failed` or `canceled`, with throttled progress in between."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

from redis import Redis
from redis.client import Pipeline

from contract.jobs import (
    JOB_SECONDS,
    MAX_EVENTS,
    STEP_SECONDS,
    Histogram,
    JobRecord,
    Status,
    job_key,
    transition,
)
from contract.settings import Settings
from ddnm.sampling import StepInfo

MAX_ATTEMPTS = 3  # workers a job may lose before it fails instead of running again


class JobCanceled(Exception):
    """The job was canceled (DELETE /jobs/{id}); raised from the sampler's callback to stop it."""


class JobTimedOut(Exception):
    """The job ran past DDNM_JOB_TIME_LIMIT_S."""


class WorkerStopping(Exception):
    """The worker is shutting down (SIGTERM); raised from the sampler's callback so that the job
    goes back to the queue at once, for another worker."""


def _observe(pipe: Pipeline, histogram: Histogram, values: list[float]) -> None:
    counts = Counter(field for v in values for field in histogram.fields(v))
    for field, n in counts.items():
        pipe.hincrby(histogram.key, field, n)
    if values:
        pipe.hincrbyfloat(histogram.key, "sum", sum(values))


class JobRun:
    """One attempt by this worker at job `job_id`; it stops at the next step once `stopping`
    is set."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        job_id: str,
        worker_id: str,
        stopping: threading.Event | None = None,
    ) -> None:
        self.redis = redis
        self.stopping = stopping
        self.settings = settings
        self.job_id = job_id
        self.worker_id = worker_id
        self.started = self.last_step = time.monotonic()
        self.last_write = -float("inf")
        self.step_seconds: list[float] = []  # not yet written to the histogram

    def start(self, checkpoint_sha256: str) -> JobRecord | None:
        """Claim the job (queued, or running when a lost worker's attempt is handed out again)
        for the model with this checkpoint; None when it is gone, canceled or already done, and
        when it is not run again after a lost worker (see `_ended_after_lost_worker`)."""
        fields = self.redis.hgetall(job_key(self.job_id))
        if not fields:
            return None
        record = JobRecord.from_redis(fields)
        if record.status == Status.RUNNING and self._ended_after_lost_worker(record):
            return None
        applied, _ = transition(
            self.redis,
            self.job_id,
            Status.RUNNING,
            (Status.QUEUED, Status.RUNNING),
            worker=self.worker_id,
            checkpoint_sha256=checkpoint_sha256,
            attempts=record.attempts + 1,
            started_at=time.time(),
            step=0,
            total=0,
        )
        return record if applied else None

    def _ended_after_lost_worker(self, record: JobRecord) -> bool:
        """A running job handed out again lost its worker. It ends here, not run again, when it
        was canceled meanwhile or has lost MAX_ATTEMPTS workers (a job that kills every worker
        that runs it, e.g. out of memory, must not go round forever). True when it ended."""
        if record.cancel_requested_at is not None:
            self._finish(self.redis, Status.CANCELED)
        elif record.attempts >= MAX_ATTEMPTS:
            error = f"its worker was lost in each of {record.attempts} attempts; not run again"
            self._finish(self.redis, Status.FAILED, error=error)
        else:
            return False
        return True

    def on_step(self, info: StepInfo) -> None:
        """Sampler callback: stop if canceled or out of time; write progress now and then."""
        now = time.monotonic()
        self.step_seconds.append(now - self.last_step)
        self.last_step = now
        if self.redis.hexists(job_key(self.job_id), "cancel_requested_at"):
            raise JobCanceled(f"canceled at step {info.step} of {info.total}")
        if self.stopping is not None and self.stopping.is_set():
            raise WorkerStopping(f"worker stopping at step {info.step} of {info.total}")
        if now - self.started > self.settings.job_time_limit_s:
            raise JobTimedOut(f"ran past the time limit of {self.settings.job_time_limit_s} s")
        if info.step == info.total or now - self.last_write >= self.settings.progress_interval_s:
            self.last_write = now
            self._progress(info.step, info.total, (now - self.started) / info.step)

    def _progress(self, step: int, total: int, seconds_per_step: float) -> None:
        fields = {
            "step": step,
            "total": total,
            "eta_s": round(seconds_per_step * (total - step), 3),
        }
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(job_key(self.job_id), mapping=fields)  # type: ignore[arg-type]
            pipe.xadd(
                job_key(self.job_id, "events"),
                {"event": "progress", "data": json.dumps(fields)},
                maxlen=MAX_EVENTS,
                approximate=True,
            )
            _observe(pipe, STEP_SECONDS, self.step_seconds)
            self.step_seconds = []
            pipe.execute()

    def succeed(self, png: bytes, **fields: str | float) -> None:
        self._end(Status.SUCCEEDED, png, **fields)

    def fail(self, error: str) -> None:
        self._end(Status.FAILED, None, error=error)

    def cancel(self) -> None:
        self._end(Status.CANCELED, None)

    def requeue(self) -> None:
        """Back to queued, for another worker (the job's message goes back to the queue)."""
        with self.redis.pipeline(transaction=True) as pipe:
            _observe(pipe, STEP_SECONDS, self.step_seconds)
            transition(pipe, self.job_id, Status.QUEUED, (Status.RUNNING,), step=0, eta_s=0)
            pipe.execute()

    def _end(self, status: Status, png: bytes | None, **fields: str | float) -> None:
        ttl = self.settings.job_ttl_s
        with self.redis.pipeline(transaction=True) as pipe:
            if png is not None:
                pipe.set(job_key(self.job_id, "result"), png, ex=ttl)
            _observe(pipe, STEP_SECONDS, self.step_seconds)
            _observe(pipe, JOB_SECONDS, [time.monotonic() - self.started])
            self._finish(pipe, status, **fields)
            pipe.execute()

    def _finish(self, client: Redis | Pipeline, status: Status, **fields: str | float) -> None:
        """The running job's final status change; its keys expire DDNM_JOB_TTL_S from now."""
        ttl = self.settings.job_ttl_s
        transition(
            client,
            self.job_id,
            status,
            (Status.RUNNING,),
            ttl,
            finished_at=time.time(),
            eta_s=0,
            **fields,
        )
