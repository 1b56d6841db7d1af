"""Job records in Redis, shared by the API (which creates and cancels jobs) and the workers (which
run them). Pure layout and one atomic status-change script; each side brings its own client
(`redis.Redis` in the worker, `redis.asyncio.Redis` in the API).

Keys (prefix `ddnm:`), all of one job expiring together `job_ttl_s` after it ends:
    job:{id}             hash: the record (`JobRecord`)
    job:{id}:image       bytes of the uploaded image
    job:{id}:mask        bytes of the uploaded mask (inpainting only)
    job:{id}:result      PNG bytes of the restoration
    job:{id}:events      stream of {"event": "status" | "progress", "data": JSON}; the stream ids
                         are the server-sent-event ids, so a client resumes with Last-Event-ID;
                         when the job ends its status events move to the record ("history")
    idempotency:{owner}:{key}  "{job id} {payload sha256}", scoped to the API key that sent it
    active               sorted set: ids of unfinished jobs, scored by admission time
    active:{owner}       the same, of one API key
    running:{model}      list: ids of the jobs a worker runs on `model` now (the autoscaler's
                         measure of work in progress; the Celery queue holds only waiting jobs)
    rate:{owner}:{minute}  sorted set: ids of the jobs one API key submitted in one minute
    webhooks             sorted set: ids of ended jobs with a webhook to call, scored by when
    worker:{id}          JSON heartbeat of one worker process, expiring after HEARTBEAT_MISSES beats
    models               hash: model name -> JSON ModelInfo, written by workers at start-up
    metrics:jobs         hash: status -> number of jobs that entered it
    metrics:{histogram}  hash: "le:{bound}" -> cumulative count, "count", "sum"
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

PREFIX = "ddnm:"
TASK_NAME = "ddnm.restore"
HEARTBEAT_MISSES = 3
MAX_ATTEMPTS = 3  # workers a job may lose before it fails instead of running again
MAX_EVENTS = 2000  # per job; progress is throttled well below this

# Celery settings both ends of the queue must share: JSON only, nothing pickled.
CELERY_WIRE = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "result_serializer": "json",
    "task_ignore_result": True,
}


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"  # not started by its deadline

    @property
    def terminal(self) -> bool:
        return self in (Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.EXPIRED)


class JobRecord(BaseModel):
    """The fields of a job's hash. The API writes the first group when it admits the job, the
    worker the rest as the job runs (through `transition` and progress updates)."""

    status: Status
    created_at: float
    spec: str  # the resolved TaskSpec as JSON (model and seed filled in)
    model: str
    seed: int
    upload_sha256: str
    width: int = 0  # of the restored image
    height: int = 0
    plan: str | None = (
        None  # the tiling plan as JSON (window, overlap, windows, waves); None: whole
    )
    predicted_evaluations: int = 0  # window-sized network forwards (TaskSpec.network_evaluations)
    owner: str = ""  # id of the API key that made it (OPEN_OWNER on an open API)
    deadline_at: float | None = None  # it must start by then (spec.deadline_s after creation)
    webhook: str | None = None  # URL called when it ends
    cancel_requested_at: float | None = None
    queued_at: float | None = None  # when it was last handed back to the queue (else created_at)
    redispatched_at: float | None = None  # when its task message was last sent again
    # the task message that may start it: incremented when the API hands the job of a dead worker
    # to the queue again, so that the dead worker's own message, redelivered later, is ignored
    dispatch: int = 0

    worker: str | None = None
    attempts: int = 0
    checkpoint_sha256: str | None = None
    started_at: float | None = None
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    finished_at: float | None = None
    error: str | None = None
    consistency: float | None = None  # ||A x - y|| / ||y|| of the result
    psnr: float | None = None  # evaluate mode: against the uploaded clean image
    ssim: float | None = None
    webhook_deliveries: str | None = None  # JSON list of {"at", "status" | "error"}, oldest first
    history: str | None = None  # an ended job's status events, JSON [[stream id, data], ..]

    @classmethod
    def from_redis(cls, fields: dict[Any, Any]) -> JobRecord:
        """From HGETALL's answer (bytes or str keys and values)."""
        return cls.model_validate({as_text(k): as_text(v) for k, v in fields.items()})

    def to_redis(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.model_dump(exclude_none=True).items()}


def as_text(value: bytes | str) -> str:
    """A Redis reply as str (clients answer bytes unless decode_responses is set)."""
    return value.decode() if isinstance(value, bytes) else value


class ModelInfo(BaseModel):
    """A model as a worker serves it (published under `models` and in each heartbeat)."""

    name: str
    checkpoint_sha256: str
    image_size: int
    class_conditional: bool = False
    classifier: bool = False


class Heartbeat(BaseModel):
    """A worker process's state: `ready` once its model is loaded, else `message` says why not."""

    worker: str
    model: str
    ready: bool
    message: str = ""
    info: ModelInfo | None = None
    device: str = ""
    jobs: list[str] = []  # the jobs it is running now
    at: float


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram kept in a Redis hash: cumulative counts under "le:{bound}",
    and "count" and "sum" (workers observe, the API renders)."""

    name: str
    help: str
    bounds: tuple[float, ...]

    @property
    def key(self) -> str:
        return f"{PREFIX}metrics:{self.name}"

    def fields(self, value: float) -> list[str]:
        """The bucket fields an observation of `value` increments."""
        return [f"le:{b}" for b in self.bounds if value <= b] + ["count"]


STEP_SECONDS = Histogram(
    "ddnm_step_seconds",
    "Seconds per sampler transition.",
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
JOB_SECONDS = Histogram(
    "ddnm_job_duration_seconds",
    "Seconds from a job's start on a worker to its end.",
    (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)


def queue_name(model: str) -> str:
    """The Celery queue of the workers serving `model`."""
    return f"ddnm.restore.{model}"


def job_key(job_id: str, part: str = "") -> str:
    """Key of a job's record, or of one of its parts: image, mask, result, events."""
    return f"{PREFIX}job:{job_id}" + (f":{part}" if part else "")


JOB_PARTS = ("image", "mask", "result", "events")
OPEN_OWNER = "open"
IDEMPOTENCY_KEY = PREFIX + "idempotency:{}:{}"  # owner, key
ACTIVE_KEY = PREFIX + "active"
RATE_KEY = PREFIX + "rate:{}:{}"  # owner, minute
WEBHOOKS_KEY = PREFIX + "webhooks"
WORKER_KEY = PREFIX + "worker:{}"
RUNNING_KEY = PREFIX + "running:{}"  # model
MODELS_KEY = PREFIX + "models"
JOBS_COUNTER_KEY = PREFIX + "metrics:jobs"


# Atomic status change. KEYS: job hash, events stream, status counter, then the parts that expire
# with the job (image, mask, result). ARGV: new status, allowed current statuses (space
# separated), TTL seconds (0 keeps the keys as they are), event JSON, max events, guard (JSON
# object of fields that must hold these values), job id, terminal ("1": the job ends: its uploads
# and its event stream are deleted (its status events kept in "history"), it leaves the active
# sets, its webhook is due), result (""
# or the bytes to store as the job's result), then field/value pairs to set. A job entering or
# leaving `running` enters or leaves its model's running list.
# Returns {1, previous status} when applied, {0, current status or ""} when not.
_TRANSITION_LUA = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, ''} end
local allowed = false
for s in string.gmatch(ARGV[2], '%S+') do
  if s == current then allowed = true end
end
if not allowed then return {0, current} end
for field, value in pairs(cjson.decode(ARGV[6])) do
  if redis.call('HGET', KEYS[1], field) ~= tostring(value) then return {0, current} end
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], unpack(ARGV, 10))
if ARGV[9] ~= '' then redis.call('SET', KEYS[6], ARGV[9]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', 'status', 'data', ARGV[4])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
if current == 'running' or ARGV[1] == 'running' then
  local running = '__PREFIX__running:' .. (redis.call('HGET', KEYS[1], 'model') or '')
  redis.call('LREM', running, 0, ARGV[7])
  if ARGV[1] == 'running' then redis.call('RPUSH', running, ARGV[7]) end
end
if ARGV[8] == '1' then
  redis.call('DEL', KEYS[4], KEYS[5])
  -- an ended job keeps its status events only, as [[id, data], ..] in its record's "history"
  -- (a stream costs kilobytes even when short); Last-Event-ID still resumes from their ids
  local kept = {}
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
    if entry[2][2] == 'status' then table.insert(kept, {entry[1], entry[2][4]}) end
  end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'history', cjson.encode(kept))
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  redis.call('ZREM', '__PREFIX__active', ARGV[7])
  redis.call('ZREM', '__PREFIX__active:' .. owner, ARGV[7])
  if redis.call('HEXISTS', KEYS[1], 'webhook') == 1 then
    redis.call('ZADD', '__PREFIX__webhooks', redis.call('TIME')[1], ARGV[7])
  end
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  for i, key in ipairs(KEYS) do
    if i ~= 3 then redis.call('EXPIRE', key, ttl) end
  end
end
return {1, current}
""".replace("__PREFIX__", PREFIX)


def past_deadline(record: JobRecord, now: float) -> bool:
    return record.deadline_at is not None and now > record.deadline_at


def expire(client: Any, job_id: str, ttl_s: int) -> Any:
    """End a queued job that was not started by its deadline (sync or asyncio client)."""
    error = "not started by its deadline; submit it again with a later one"
    return transition(
        client,
        job_id,
        Status.EXPIRED,
        (Status.QUEUED,),
        ttl_s,
        finished_at=time.time(),
        error=error,
    )


def transition(
    client: Any,
    job_id: str,
    status: Status,
    allowed_from: tuple[Status, ...],
    ttl_s: int = 0,
    guard: dict[str, str | int] | None = None,
    result: bytes = b"",
    **fields: str | int | float | None,
) -> Any:
    """Move a job to `status` if it is in one of `allowed_from` and its fields match `guard`:
    set `fields` (those not None) and its `result`, if given; append a status event, count
    it, and when ttl_s > 0 let the job's keys expire after ttl_s seconds. A job that ends loses
    its uploads and becomes due for its webhook.

    Works with a sync or an asyncio Redis client (await the result with the latter); the result
    is [applied (0/1), previous or current status].
    """
    keys = [job_key(job_id), job_key(job_id, "events"), JOBS_COUNTER_KEY]
    keys += [job_key(job_id, part) for part in JOB_PARTS if part != "events"]
    written = {k: v for k, v in fields.items() if v is not None}
    event = json.dumps({"status": status.value, **written})
    pairs = [str(v) for item in written.items() for v in item]
    terminal = "1" if status.terminal else "0"
    guard_json = json.dumps({k: str(v) for k, v in (guard or {}).items()})
    args = [status.value, " ".join(allowed_from), ttl_s, event, MAX_EVENTS, guard_json]
    tail = [job_id, terminal, result, *pairs]
    return client.eval(_TRANSITION_LUA, len(keys), *keys, *args, *tail)
