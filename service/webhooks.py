"""Webhooks: an ended job's record POSTed to the URL its client gave, signed and retried.

A job that ends is put in the `webhooks` set, due at once (by the status change itself, so that
no end is missed). Each API process delivers what is due: it claims a job for CLAIM_S (so that
two processes do not both call, and a process that dies mid-call leaves it for another), POSTs
the job as `GET /jobs/{id}` shows it, and records the delivery in the job's record; a failure
(no answer in TIMEOUT_S, or a status other than 2xx) is retried after DDNM_WEBHOOK_BACKOFF_S,
doubling, up to DDNM_WEBHOOK_ATTEMPTS deliveries.

Signature: `X-DDNM-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>` with
`X-DDNM-Timestamp: <unix seconds>`; the secret is the hex SHA-256 digest of the caller's API key
(`DDNM_WEBHOOK_SECRET` on an open API). A receiver checks both, and refuses old timestamps.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
from redis.exceptions import RedisError

from contract.jobs import WEBHOOKS_KEY, JobRecord, as_text, job_key
from service.auth import Keys
from service.jobs import JobStore
from service.schemas import Job

log = logging.getLogger(__name__)
CLAIM_S = 60.0
TIMEOUT_S = 10.0
POLL_S = 0.25
# the due jobs (at most ARGV[3]), each claimed until ARGV[2]
_CLAIM_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


class Deliverer:
    def __init__(self, store: JobStore, keys: Keys, http: httpx.AsyncClient) -> None:
        self.store, self.keys, self.http = store, keys, http
        self.redis = store.redis
        self.settings = store.settings

    async def run(self) -> None:
        """The delivery loop (a task of the API's lifespan)."""
        while True:
            try:
                due = await self._claim()
                await asyncio.gather(*(self._deliver(as_text(job_id)) for job_id in due))
            except RedisError as err:
                log.warning("webhooks: job store unavailable: %r", err)
            await asyncio.sleep(POLL_S)

    async def _claim(self) -> list[Any]:
        now = time.time()
        due: Any = await self.redis.eval(_CLAIM_LUA, 1, WEBHOOKS_KEY, now, now + CLAIM_S, 20)
        return list(due)

    async def _deliver(self, job_id: str) -> None:
        fields = await self.redis.hgetall(job_key(job_id))
        if not fields:  # expired meanwhile
            await self.redis.zrem(WEBHOOKS_KEY, job_id)
            return
        record = JobRecord.from_redis(fields)
        deliveries = json.loads(record.webhook_deliveries or "[]")
        outcome = await self._post(job_id, record)
        deliveries.append(outcome)
        await self.redis.hset(job_key(job_id), "webhook_deliveries", json.dumps(deliveries))
        if "status" in outcome and 200 <= outcome["status"] < 300:
            await self.redis.zrem(WEBHOOKS_KEY, job_id)
        elif len(deliveries) >= self.settings.webhook_attempts:
            log.warning("webhook given up", extra={"job_id": job_id, "deliveries": deliveries})
            await self.redis.zrem(WEBHOOKS_KEY, job_id)
        else:
            retry_at = time.time() + self.settings.webhook_backoff_s * 2 ** (len(deliveries) - 1)
            await self.redis.zadd(WEBHOOKS_KEY, {job_id: retry_at})

    async def _post(self, job_id: str, record: JobRecord) -> dict[str, Any]:
        """One delivery: {"at", "status"} when the receiver answered, else {"at", "error"}."""
        assert record.webhook is not None, "only jobs with a webhook are due"
        body = Job.from_record(job_id, record).model_dump_json().encode()
        at = round(time.time(), 3)
        timestamp = int(at)
        secret = self.keys.secret(record.owner) or ""
        headers = {
            "Content-Type": "application/json",
            "X-DDNM-Job": job_id,
            "X-DDNM-Timestamp": str(timestamp),
            "X-DDNM-Signature": signature(secret, timestamp, body),
        }
        try:
            response = await self.http.post(record.webhook, content=body, headers=headers)
        except httpx.HTTPError as err:
            return {"at": at, "error": _describe(err)}
        return {"at": at, "status": response.status_code}


def _describe(err: httpx.HTTPError) -> str:
    """What went wrong, in words of the receiver's side (no addresses of this service)."""
    if isinstance(err, httpx.TimeoutException):
        return f"no answer within {TIMEOUT_S:.0f} s"
    if isinstance(err, httpx.ConnectError):
        return "connection refused or host unreachable"
    return "the connection failed"
