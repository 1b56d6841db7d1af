"""The API's side of the job records (layout in `contract.jobs`): admit, read, cancel, reap.

Admission checks the caller's rate, quota and the queue's depth and counts the job as active in
one script, writes the record, the uploaded pixels and the first status event in one transaction,
then enqueues the Celery task by name (the API never imports the worker code). Every job is read
through its owner: another key's job does not exist for the caller.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract.jobs import (
    ACTIVE_KEY,
    HEARTBEAT_MISSES,
    IDEMPOTENCY_KEY,
    MAX_ATTEMPTS,
    MODELS_KEY,
    RATE_KEY,
    WORKER_KEY,
    Heartbeat,
    JobRecord,
    ModelInfo,
    Status,
    as_text,
    expire,
    job_key,
    past_deadline,
    queue_name,
    transition,
)
from contract.settings import Settings
from contract.spec import TaskSpec

Enqueue = Callable[[str, str, int], None]  # (job id, queue name, dispatch): sends the task
# HSET KEYS[1] ARGV[1] ARGV[2] only while the job's status is running
_FLAG_IF_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
"""
# Admission. KEYS: the key's jobs admitted in this minute, active jobs of the key, all active
# jobs (sorted sets, so that a refused admission is undone with ZREM, which Redis allows at its
# memory cap). ARGV: rate limit, active jobs per key, active jobs in all, job id, now, oldest
# unfinished job to count (older ones expired unfinished). Returns "ok", "rate", "quota", "full".
_ADMIT_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 'rate' end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 'quota' end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return 'full' end
for i = 1, 3 do redis.call('ZADD', KEYS[i], ARGV[5], ARGV[4]) end
redis.call('EXPIRE', KEYS[1], 120)
return 'ok'
"""
ADMISSION_LEASE_S = 60  # an Idempotency-Key claimed by a request whose job is not stored yet
MODELS_CACHE_S = 1.0
QUOTA_RETRY_AFTER_S = 10  # after a refusal for too many unfinished jobs, or a full queue


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before with a different payload."""


class Refused(Exception):
    """Not admitted now (429 or 503): `detail` says why, `retry_after_s` when to try again."""

    def __init__(self, status_code: int, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.status_code, self.detail, self.retry_after_s = status_code, detail, retry_after_s


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
    owner: str  # the caller's key id
    webhook: str | None


def counting_sets(owner: str, minute: int) -> list[str]:
    """The sets admission counts a job in: the key's jobs of this minute, the key's active jobs,
    all active jobs."""
    return [RATE_KEY.format(owner, minute), f"{ACTIVE_KEY}:{owner}", ACTIVE_KEY]


class JobStore:
    def __init__(self, redis: Redis, settings: Settings, enqueue: Enqueue) -> None:
        self.redis = redis
        self.settings = settings
        self.enqueue = enqueue
        self._models: tuple[float, dict[str, ModelInfo]] = (-float("inf"), {})

    async def models(self) -> dict[str, ModelInfo]:
        """The models workers have announced (persisting across worker restarts), as read at
        most MODELS_CACHE_S ago (announcements are rare; admission asks on every request)."""
        at, known = self._models
        if time.monotonic() - at > MODELS_CACHE_S or not known:
            raw = await self.redis.hgetall(MODELS_KEY)
            known = {as_text(k): ModelInfo.model_validate_json(v) for k, v in raw.items()}
            self._models = (time.monotonic(), known)
        return known

    async def heartbeats(self) -> list[Heartbeat]:
        """Workers alive now (their heartbeat keys expire when they stop beating)."""
        keys = [k async for k in self.redis.scan_iter(match=WORKER_KEY.format("*"))]
        values = await self.redis.mget(keys) if keys else []
        return [Heartbeat.model_validate_json(v) for v in values if v is not None]

    async def admit(
        self, admission: Admission, idempotency_key: str | None
    ) -> tuple[str, JobRecord | None]:
        """Create and enqueue a job: its id and record; with an Idempotency-Key the caller used
        before, its job's id instead (and None: the caller reads the record).

        Raises IdempotencyConflict when the key was used with a different payload, Refused when
        the caller is over its rate or quota or the queue is full. When the job cannot be stored
        or queued, the error goes on and the job is not left waiting forever: it is marked failed
        and the key freed, so that the client can submit it again.
        """
        job_id = uuid.uuid4().hex
        owner = admission.owner
        key = None if idempotency_key is None else IDEMPOTENCY_KEY.format(owner, idempotency_key)
        if key is not None:
            # claimed for ADMISSION_LEASE_S; stored with its job for idempotency_ttl_s
            claim = f"{job_id} {admission.upload_sha256}"
            if not await self.redis.set(key, claim, nx=True, ex=ADMISSION_LEASE_S):
                return await self._replay(key, admission.upload_sha256), None
        model = admission.spec.model
        assert model is not None, "admission resolves the model"
        counted = counting_sets(owner, int(time.time() // 60))
        try:
            await self._count_in(job_id, counted)
            record = await self._create(job_id, admission, key)
            await anyio.to_thread.run_sync(self.enqueue, job_id, queue_name(model), 0)
        except Exception:
            await self._abandon(job_id, counted, key)
            raise
        return job_id, record

    async def _count_in(self, job_id: str, counted: list[str]) -> None:
        """Count the job against the caller's rate and quota and the queue's depth, or refuse."""
        now, s = time.time(), self.settings
        limits = [s.rate_limit_per_minute, s.max_active_jobs_per_key, s.max_queued_jobs]
        oldest = now - s.pending_ttl_s
        verdict = as_text(
            await self.redis.eval(_ADMIT_LUA, len(counted), *counted, *limits, job_id, now, oldest)
        )
        if verdict == "rate":
            retry = max(1, int(60 - now % 60) + 1)
            raise Refused(
                429, f"over the rate limit of {s.rate_limit_per_minute} jobs a minute", retry
            )
        if verdict == "quota":
            raise Refused(
                429,
                f"this key has {s.max_active_jobs_per_key} unfinished jobs, its quota; wait for "
                "some to end",
                QUOTA_RETRY_AFTER_S,
            )
        if verdict == "full":
            raise Refused(
                503, "the service is full: its queue is at its limit", QUOTA_RETRY_AFTER_S
            )

    async def _abandon(self, job_id: str, counted: list[str], key: str | None) -> None:
        """After a failed admission: fail the job if it was stored, uncount it, free the key if
        still ours (best effort: Redis may be what failed)."""
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
            for counting_set in counted:
                await self.redis.zrem(counting_set, job_id)
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

    async def _create(self, job_id: str, admission: Admission, key: str | None) -> JobRecord:
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
            owner=admission.owner,
            webhook=admission.webhook,
        )
        if spec.deadline_s is not None:
            record = record.model_copy(update={"deadline_at": record.created_at + spec.deadline_s})
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
        return record

    async def get(self, job_id: str, owner: str) -> JobRecord | None:
        """The job's record, if it exists and belongs to `owner`."""
        fields = await self.redis.hgetall(job_key(job_id))
        record = JobRecord.from_redis(fields) if fields else None
        return record if record is not None and record.owner == owner else None

    async def cancel(self, job_id: str) -> None:
        """Ask a job to stop: a queued job is canceled at once, a running one at its next step
        (the worker sees `cancel_requested_at`), or at once when its worker is dead."""
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
        if applied or as_text(current) != Status.RUNNING:
            return
        # atomically: not on a job that has ended meanwhile
        await self.redis.eval(_FLAG_IF_RUNNING, 1, job_key(job_id), "cancel_requested_at", now)
        worker = await self.redis.hget(job_key(job_id), "worker")
        if worker is not None and not await self.redis.exists(WORKER_KEY.format(as_text(worker))):
            await self._end_lost(job_id, as_text(worker), Status.CANCELED)

    async def result(self, job_id: str) -> bytes | None:
        png: Any = await self.redis.get(job_key(job_id, "result"))
        return png

    async def reap(self) -> dict[str, str]:
        """Repair the jobs whose worker or task message is gone: {job id: what was done}.

        A job running under a worker whose heartbeat has expired, or that its live worker does
        not list as its own (its end was lost, e.g. with a Redis crash), is handed back to the
        queue with a new message (`_hand_back`). A job queued for DDNM_REDISPATCH_S while its
        model's queue is empty has lost its message (taken by a worker as Redis crashed): the
        message is sent again, with the same dispatch, so that whichever copy comes first runs
        it and the other is skipped.
        """
        members: Any = await self.redis.zrange(ACTIVE_KEY, 0, -1)
        ids = [as_text(i) for i in members]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(job_key(job_id))
            rows = await pipe.execute()
        records = {i: JobRecord.from_redis(row) for i, row in zip(ids, rows, strict=True) if row}
        beats = {b.worker: b for b in await self.heartbeats()}
        models = sorted({r.model for r in records.values()})
        empty = {m for m in models if not await self.redis.llen(queue_name(m))}  # before repairs
        repaired = {}
        for job_id, record in records.items():
            done = await self._repair(job_id, record, beats, empty)
            if done is not None:
                repaired[job_id] = done
        return repaired

    async def _repair(
        self, job_id: str, record: JobRecord, beats: dict[str, Heartbeat], empty: set[str]
    ) -> str | None:
        now, s = time.time(), self.settings
        if record.status == Status.RUNNING and record.worker is not None:
            beat = beats.get(record.worker)
            settled = now - (record.started_at or now) > s.heartbeat_s * HEARTBEAT_MISSES
            if beat is None or (settled and job_id not in beat.jobs):
                await self._hand_back(job_id, record, record.worker)
                return "handed back: its worker died" if beat is None else "handed back: orphaned"
        elif record.status == Status.QUEUED and past_deadline(record, now):
            await expire(self.redis, job_id, self.settings.job_ttl_s)
            return "expired: not started by its deadline"
        elif record.status == Status.QUEUED:
            waited = now - max(record.queued_at or record.created_at, record.redispatched_at or 0.0)
            if waited > s.redispatch_s and record.model in empty:
                await self.redis.hset(job_key(job_id), "redispatched_at", now)
                queue = queue_name(record.model)
                await anyio.to_thread.run_sync(self.enqueue, job_id, queue, record.dispatch)
                return "its lost task message sent again"
        return None

    async def _hand_back(self, job_id: str, record: JobRecord, worker: str) -> None:
        """A running job whose worker is lost: queued again with a new message (the old one,
        if ever redelivered, is stale), canceled if asked, failed after MAX_ATTEMPTS."""
        if record.cancel_requested_at is not None:
            await self._end_lost(job_id, worker, Status.CANCELED)
        elif record.attempts >= MAX_ATTEMPTS:
            error = f"its worker was lost in each of {record.attempts} attempts; not run again"
            await self._end_lost(job_id, worker, Status.FAILED, error=error)
        else:
            dispatch = record.dispatch + 1
            applied, _ = await transition(
                self.redis,
                job_id,
                Status.QUEUED,
                (Status.RUNNING,),
                guard={"worker": worker, "attempts": record.attempts},
                dispatch=dispatch,
                queued_at=time.time(),
                step=0,
                eta_s=0,
            )
            if applied:
                await anyio.to_thread.run_sync(
                    self.enqueue, job_id, queue_name(record.model), dispatch
                )

    async def _end_lost(
        self, job_id: str, worker: str, status: Status, error: str | None = None
    ) -> None:
        """End a running job whose worker `worker` is dead."""
        await transition(
            self.redis,
            job_id,
            status,
            (Status.RUNNING,),
            self.settings.job_ttl_s,
            guard={"worker": worker},
            finished_at=time.time(),
            eta_s=0,
            error=error,
        )
