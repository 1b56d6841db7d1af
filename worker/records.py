"""The worker's side of the job records (layout in `contract.jobs`): one attempt at a job, from
`running` to `succeeded`, `failed` or `canceled`, with throttled progress in between."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Mapping

import numpy as np
from PIL import Image
from redis import Redis
from redis.client import Pipeline
from torch import Tensor

from contract.jobs import (
    JOB_SECONDS,
    MAX_EVENTS,
    STEP_SECONDS,
    Histogram,
    JobRecord,
    Status,
    expire,
    job_key,
    past_deadline,
    transition,
)
from contract.settings import Settings
from ddnm.sampling import StepInfo

PREVIEW_SIDE = 128  # pixels, the longer side of a preview


class JobCanceled(Exception):
    """The job was canceled (DELETE /jobs/{id}); raised from the sampler's callback to stop it."""


class JobLost(Exception):
    """The job is no longer this worker's: the API handed it to the queue again (this worker's
    heartbeat had expired); raised from the sampler's callback, the attempt ends unrecorded."""


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


def preview_png(x0: Tensor, side: int = PREVIEW_SIDE) -> str:
    """The current estimate x̂_{0|t} of the first sample, (B, C, H, W) in about [-1, 1], as a
    base64 PNG at most `side` pixels on its longer side (numpy and Pillow only: the job thread
    leaves torch to the scheduler)."""
    pixels = (np.clip(x0[0].detach().cpu().numpy(), -1, 1) + 1) * 127.5
    hwc = pixels.round().astype(np.uint8).transpose(1, 2, 0)
    image = Image.fromarray(hwc[..., 0] if hwc.shape[2] == 1 else hwc)
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


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
        self.attempt = self.dispatch = 0  # set by start
        self.checkpoint_sha256 = ""
        self.started = self.last_step = time.monotonic()
        self.last_write = -float("inf")
        self.last_preview = self.started  # the first preview after one interval
        self.step_seconds: list[float] = []  # not yet written to the histogram

    def start(self, checkpoint_sha256: str, dispatch: int) -> JobRecord | None:
        """Claim the queued job for the model with this checkpoint, if the task message is its
        current one (`dispatch`); None when it is gone, canceled, running or done, or when the
        message is a stale one (redelivered after the job was handed on)."""
        self.checkpoint_sha256, self.dispatch = checkpoint_sha256, dispatch
        record = self._read()
        if record is not None and past_deadline(record, time.time()):
            expire(self.redis, self.job_id, self.settings.job_ttl_s)
            return None
        return self._claim(record)

    def _read(self) -> JobRecord | None:
        fields = self.redis.hgetall(job_key(self.job_id))
        return JobRecord.from_redis(fields) if fields else None

    def _claim(self, record: JobRecord | None) -> JobRecord | None:
        """Move the queued job (as `record` holds it) to running under this attempt."""
        if record is None:
            return None
        self.attempt = record.attempts + 1
        applied, _ = transition(
            self.redis,
            self.job_id,
            Status.RUNNING,
            (Status.QUEUED,),
            guard={"dispatch": self.dispatch},
            worker=self.worker_id,
            checkpoint_sha256=self.checkpoint_sha256,
            attempts=self.attempt,
            started_at=time.time(),
            step=0,
            total=0,
        )
        return record if applied else None

    @property
    def guard(self) -> dict[str, str | int]:
        """What the job's record holds while this attempt is its current one."""
        return {"worker": self.worker_id, "attempts": self.attempt}

    def on_step(self, info: StepInfo) -> None:
        """Sampler callback: stop if canceled or out of time; write progress now and then."""
        now = time.monotonic()
        self.step_seconds.append(now - self.last_step)
        self.last_step = now
        canceled, worker, attempts = self.redis.hmget(
            job_key(self.job_id), "cancel_requested_at", "worker", "attempts"
        )
        mine = (worker, attempts) == (self.worker_id.encode(), str(self.attempt).encode())
        # not ours: handed on, unless Redis lost our claim (a crash): then it is still queued
        # for our message, and we claim it again
        if not mine and self._claim(self._read()) is None:
            raise JobLost(f"handed on at step {info.step} of {info.total}")
        if canceled is not None:
            raise JobCanceled(f"canceled at step {info.step} of {info.total}")
        if self.stopping is not None and self.stopping.is_set():
            raise WorkerStopping(f"worker stopping at step {info.step} of {info.total}")
        if now - self.started > self.settings.job_time_limit_s:
            raise JobTimedOut(f"ran past the time limit of {self.settings.job_time_limit_s} s")
        if info.step == info.total or now - self.last_write >= self.settings.progress_interval_s:
            self.last_write = now
            self._progress(info.step, info.total, (now - self.started) / info.step)
        interval = self.settings.preview_interval_s
        if interval > 0 and now - self.last_preview >= interval and info.step < info.total:
            self.last_preview = now
            preview = {"step": info.step, "png": preview_png(info.x0)}
            self._event(self.redis, "preview", preview)

    def _event(self, client: Redis | Pipeline, kind: str, data: Mapping[str, object]) -> None:
        client.xadd(
            job_key(self.job_id, "events"),
            {"event": kind, "data": json.dumps(data)},
            maxlen=MAX_EVENTS,
            approximate=True,
        )

    def _progress(self, step: int, total: int, seconds_per_step: float) -> None:
        fields = {
            "step": step,
            "total": total,
            "eta_s": round(seconds_per_step * (total - step), 3),
        }
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(job_key(self.job_id), mapping=fields)  # type: ignore[arg-type]
            self._event(pipe, "progress", fields)
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
            transition(
                pipe,
                self.job_id,
                Status.QUEUED,
                (Status.RUNNING,),
                guard=self.guard,
                queued_at=time.time(),
                step=0,
                eta_s=0,
            )
            pipe.execute()

    def _end(self, status: Status, png: bytes | None, **fields: str | float) -> None:
        """The attempt's final status change (with the result, if any), if the job is still
        this attempt's; the job's keys expire DDNM_JOB_TTL_S from now."""
        with self.redis.pipeline(transaction=True) as pipe:
            _observe(pipe, STEP_SECONDS, self.step_seconds)
            _observe(pipe, JOB_SECONDS, [time.monotonic() - self.started])
            transition(
                pipe,
                self.job_id,
                status,
                (Status.RUNNING,),
                self.settings.job_ttl_s,
                guard=self.guard,
                result=png or b"",
                finished_at=time.time(),
                eta_s=0,
                **fields,
            )
            pipe.execute()
