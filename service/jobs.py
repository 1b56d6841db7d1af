"""The API's side of the job records (layout in `contract.jobs`): admit, read, cancel, stream.

Admission writes the record, the uploaded bytes and the first status event in one transaction,
then enqueues the Celery task by name (the API never imports the worker code).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract.jobs import (
    IDEMPOTENCY_KEY,
    MODELS_KEY,
    WORKER_KEY,
    Heartbeat,
    JobRecord,
    ModelInfo,
    Status,
    as_text,
    job_key,
    queue_name,
    transition,
)
from contract.settings import Settings
from contract.spec import TaskSpec

Enqueue = Callable[[str, str], None]  # (job id, queue name): sends the task
# HSET KEYS[1] ARGV[1] ARGV[2] only while the job's status is running
_FLAG_IF_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
"""
ADMISSION_LEASE_S = 60  # an Idempotency-Key claimed by a request whose job is not stored yet


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before with a different payload."""


@dataclass(frozen=True)
class Admission:
    """What the API admits: the resolved spec and the checked upload bytes."""

    spec: TaskSpec
    image: bytes
    mask: bytes | None
    upload_sha256: str  # of the submitted spec and files, for Idempotency-Key
    size: tuple[int, int]  # (height, width) of the restored image
    plan: dict[str, int] | None  # contract.tiling.TilePlan.summary(); None: one whole-image run
    predicted_evaluations: int


class JobStore:
    def __init__(self, redis: Redis, settings: Settings, enqueue: Enqueue) -> None:
        self.redis = redis
        self.settings = settings
        self.enqueue = enqueue

    async def models(self) -> dict[str, ModelInfo]:
        """The models workers have announced (persisting across worker restarts)."""
        raw = await self.redis.hgetall(MODELS_KEY)
        return {as_text(k): ModelInfo.model_validate_json(v) for k, v in raw.items()}

    async def heartbeats(self) -> list[Heartbeat]:
        """Workers alive now (their heartbeat keys expire when they stop beating)."""
        keys = [k async for k in self.redis.scan_iter(match=WORKER_KEY.format("*"))]
        values = await self.redis.mget(keys) if keys else []
        return [Heartbeat.model_validate_json(v) for v in values if v is not None]

    async def admit(self, admission: Admission, idempotency_key: str | None) -> str:
        """Create and enqueue a job; with an Idempotency-Key seen before, return its job instead.

        Raises IdempotencyConflict when the key was used with a different payload. When the job
        cannot be stored or queued, the error goes on and the job is not left waiting forever:
        it is marked failed and the key freed, so that the client can submit it again.
        """
        job_id = uuid.uuid4().hex
        key = None if idempotency_key is None else IDEMPOTENCY_KEY.format(idempotency_key)
        if key is not None:
            # claimed for ADMISSION_LEASE_S; stored with its job for idempotency_ttl_s
            claim = f"{job_id} {admission.upload_sha256}"
            if not await self.redis.set(key, claim, nx=True, ex=ADMISSION_LEASE_S):
                return await self._replay(key, admission.upload_sha256)
        model = admission.spec.model
        assert model is not None, "admission resolves the model"
        try:
            await self._create(job_id, admission, key)
            await anyio.to_thread.run_sync(self.enqueue, job_id, queue_name(model))
        except Exception:
            await self._abandon(job_id, key)
            raise
        return job_id

    async def _abandon(self, job_id: str, key: str | None) -> None:
        """After a failed admission: fail the job if it was stored, free the key if still ours
        (best effort: Redis may be what failed)."""
        error = "the job could not be queued; submit it again"
        ttl = self.settings.job_ttl_s
        with contextlib.suppress(RedisError):
            await transition(
                self.redis,
                job_id,
                Status.FAILED,
                (Status.QUEUED,),
                ttl,
                finished_at=time.time(),
                error=error,
            )
            if key is not None and as_text(await self.redis.get(key) or "").startswith(job_id):
                await self.redis.delete(key)

    async def _replay(self, key: str, upload_sha256: str) -> str:
        claim = await self.redis.get(key)
        if claim is None:  # expired in between: too unlikely to deserve a retry loop
            raise IdempotencyConflict("Idempotency-Key expired while in use; retry")
        job_id, claimed_sha256 = as_text(claim).split()
        if claimed_sha256 != upload_sha256:
            raise IdempotencyConflict(
                "Idempotency-Key was already used for a different request; use a new key"
            )
        return job_id

    async def _create(self, job_id: str, admission: Admission, key: str | None) -> None:
        spec, ttl = admission.spec, self.settings.pending_ttl_s
        assert spec.model is not None and spec.seed is not None
        record = JobRecord(
            status=Status.QUEUED,
            created_at=time.time(),
            spec=spec.model_dump_json(),
            model=spec.model,
            seed=spec.seed,
            upload_sha256=admission.upload_sha256,
            height=admission.size[0],
            width=admission.size[1],
            plan=None if admission.plan is None else json.dumps(admission.plan),
            predicted_evaluations=admission.predicted_evaluations,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(job_id), mapping=record.to_redis())  # type: ignore[arg-type]
            pipe.set(job_key(job_id, "image"), admission.image, ex=ttl)
            if admission.mask is not None:
                pipe.set(job_key(job_id, "mask"), admission.mask, ex=ttl)
            if key is not None:
                pipe.expire(key, self.settings.idempotency_ttl_s)
            # the queued event and counter: a transition from the state just written
            transition(pipe, job_id, Status.QUEUED, (Status.QUEUED,), ttl_s=ttl)
            await pipe.execute()

    async def get(self, job_id: str) -> JobRecord | None:
        fields = await self.redis.hgetall(job_key(job_id))
        return JobRecord.from_redis(fields) if fields else None

    async def cancel(self, job_id: str) -> None:
        """Ask a job to stop: a queued job is canceled at once, a running one at its next step
        (the worker sees `cancel_requested_at`)."""
        now = time.time()
        applied, current = await transition(
            self.redis,
            job_id,
            Status.CANCELED,
            (Status.QUEUED,),
            self.settings.job_ttl_s,
            cancel_requested_at=now,
            finished_at=now,
        )
        if not applied and as_text(current) == Status.RUNNING:
            # atomically: not on a job that has ended meanwhile
            await self.redis.eval(_FLAG_IF_RUNNING, 1, job_key(job_id), "cancel_requested_at", now)

    async def result(self, job_id: str) -> bytes | None:
        png: Any = await self.redis.get(job_key(job_id, "result"))
        return png

    async def events(self, job_id: str, last_id: str, block_s: float) -> AsyncIterator[str]:
        """Server-sent events from the job's stream after `last_id`, until the job has ended;
        a comment line every `block_s` seconds keeps idle connections open."""
        stream = job_key(job_id, "events")
        while True:
            record = await self.get(job_id)
            ended = record is None or record.status.terminal
            answer: Any = await self.redis.xread(
                {stream: last_id}, count=100, block=None if ended else int(block_s * 1000)
            )
            entries = answer[0][1] if answer else []
            for entry_id, fields in entries:
                last_id = as_text(entry_id)
                event, data = as_text(fields[b"event"]), as_text(fields[b"data"])
                yield f"id: {last_id}\nevent: {event}\ndata: {data}\n\n"
            if not entries:
                if ended:
                    return
                yield ": keep-alive\n\n"
