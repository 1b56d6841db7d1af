"""Job event streams for server-sent events, without a Redis connection per open stream.

One `EventHub` per API process holds one blocking XREAD over the streams of every job that
someone follows, on a connection of its own; when entries arrive it wakes that job's followers,
and each follower reads its own entries from its own position with a short, non-blocking read.
So a thousand open streams cost one connection, and a follower loses nothing: it registers
before it reads, and reads everything after its last id each time it wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract.jobs import Status, as_text, job_key

log = logging.getLogger(__name__)
HUB_BLOCK_S = 1.0  # longest wait before the hub follows a stream added meanwhile
HUB_RETRY_S = 0.5  # after the hub's connection failed


class TooManyStreams(Exception):
    """The caller has its maximum of open streams."""


class EventHub:
    def __init__(self, redis: Redis, reader: Redis, max_per_owner: int) -> None:
        """`redis`: the API's client (followers' reads); `reader`: a client of the hub alone."""
        self.redis, self.reader = redis, reader
        self.max_per_owner = max_per_owner
        self.followers: dict[str, set[asyncio.Event]] = {}  # stream key -> wake-ups
        self.cursors: dict[str, str] = {}  # stream key -> last id the hub has seen
        self.per_owner: Counter[str] = Counter()
        self.changed = asyncio.Event()

    def open(self, owner: str) -> None:
        """Count a stream against its owner's cap, or raise TooManyStreams."""
        if self.per_owner[owner] >= self.max_per_owner:
            raise TooManyStreams(f"{self.max_per_owner} event streams are open for this key")
        self.per_owner[owner] += 1

    async def follow(
        self, owner: str, job_id: str, last_id: str, keepalive_s: float
    ) -> AsyncIterator[str]:
        """Server-sent events of the job after `last_id` until its final status (the stream was
        counted by `open`); a comment line every `keepalive_s` seconds keeps idle connections."""
        stream, wake = job_key(job_id, "events"), asyncio.Event()
        self.followers.setdefault(stream, set()).add(wake)
        self.cursors.setdefault(stream, last_id)
        self.changed.set()
        try:
            while True:
                wake.clear()
                # asked before the read: once the job has ended, its final event is in the read
                # (a status and its event are written together)
                ended = await _ended(self.redis, job_id)
                entries = await self._entries(job_id, last_id, ended)
                for entry_id, event, data in entries:
                    last_id = entry_id
                    yield f"id: {last_id}\nevent: {event}\ndata: {data}\n\n"
                if len(entries) == 100:
                    continue  # more are waiting
                if ended:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), keepalive_s)
                if not wake.is_set():
                    yield ": keep-alive\n\n"
        finally:
            self._leave(owner, stream, wake)

    async def _entries(self, job_id: str, after: str, ended: bool) -> list[tuple[str, str, str]]:
        """(id, event, data) of the job's events after id `after`: from its stream, or from its
        record's history once it has ended (the stream is gone then)."""
        if ended:
            history = await self.redis.hget(job_key(job_id), "history")
            if history is not None:
                kept = [(i, "status", d) for i, d in json.loads(history)]
                return [e for e in kept if _stream_id(e[0]) > _stream_id(after)]
        stream = job_key(job_id, "events")
        entries: Any = await self.redis.xrange(stream, f"({after}", "+", count=100)
        return [(as_text(i), as_text(f[b"event"]), as_text(f[b"data"])) for i, f in entries]

    def _leave(self, owner: str, stream: str, wake: asyncio.Event) -> None:
        self.per_owner[owner] -= 1
        followers = self.followers[stream]
        followers.discard(wake)
        if not followers:
            del self.followers[stream]
            self.cursors.pop(stream, None)

    async def run(self) -> None:
        """The hub's loop (a task of the API's lifespan)."""
        while True:
            if not self.followers:
                self.changed.clear()
                await self.changed.wait()
            try:
                await self._read_once()
            except RedisError as err:
                log.warning("event hub: %r", err)
                await asyncio.sleep(HUB_RETRY_S)

    async def _read_once(self) -> None:
        cursors: Any = dict(self.cursors)
        answer: Any = await self.reader.xread(cursors, count=100, block=int(HUB_BLOCK_S * 1000))
        for stream_key, entries in answer or []:
            stream = as_text(stream_key)
            if stream in self.cursors and entries:
                self.cursors[stream] = as_text(entries[-1][0])
            for wake in self.followers.get(stream, ()):
                wake.set()


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


async def _ended(redis: Redis, job_id: str) -> bool:
    """The job has ended or is gone (its record expired)."""
    status = await redis.hget(job_key(job_id), "status")
    return status is None or Status(as_text(status)).terminal
