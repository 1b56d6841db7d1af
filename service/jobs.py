"""The API's side of the job records (layout in `contract.jobs`): admit, read, cancel, stream.

Admission writes the record, the uploaded bytes and the first status event in one transaction,
then enqueues the Celery task by name (the API never imports the worker code).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio import Redis

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


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before with a different payload."""


@dataclass(frozen=True)
class Admission:
    """What the API admits: the resolved spec and the checked upload bytes."""

    spec: TaskSpec
    image: bytes
    mask: bytes | None
    upload_sha256: str  # of the submitted spec and files, for Idempotency-Key


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

        Raises IdempotencyConflict when the key was used with a different payload.
        """
        job_id = uuid.uuid4().hex
        if idempotency_key is not None:
            key = IDEMPOTENCY_KEY.format(idempotency_key)
            claim = f"{job_id} {admission.upload_sha256}"
            ttl = self.settings.idempotency_ttl_s
            if not await self.redis.set(key, claim, nx=True, ex=ttl):
                return await self._replay(key, admission.upload_sha256)
        await self._create(job_id, admission)
        model = admission.spec.model
        assert model is not None, "admission resolves the model"
        await anyio.to_thread.run_sync(self.enqueue, job_id, queue_name(model))
        return job_id

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

    async def _create(self, job_id: str, admission: Admission) -> None:
        spec, ttl = admission.spec, self.settings.pending_ttl_s
        assert spec.model is not None and spec.seed is not None
        record = JobRecord(
            status=Status.QUEUED,
            created_at=time.time(),
            spec=spec.model_dump_json(),
            model=spec.model,
            seed=spec.seed,
            upload_sha256=admission.upload_sha256,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(job_id), mapping=record.to_redis())  # type: ignore[arg-type]
            pipe.set(job_key(job_id, "image"), admission.image, ex=ttl)
            if admission.mask is not None:
                pipe.set(job_key(job_id, "mask"), admission.mask, ex=ttl)
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
            await self.redis.hset(job_key(job_id), "cancel_requested_at", str(now))

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
