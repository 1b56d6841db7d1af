"""A worker process's heartbeat in Redis: alive, which model, ready or why not, current job."""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from contract.jobs import HEARTBEAT_MISSES, WORKER_KEY, Heartbeat
from contract.settings import Settings

log = logging.getLogger(__name__)


def worker_id(pid: int | str) -> str:
    """The id of worker process `pid` on this host ("*" gives the pattern of all of them)."""
    return f"{socket.gethostname()}-{pid}"


class HeartbeatThread(threading.Thread):
    """Writes the state every `heartbeat_s` seconds (and at once on `update`); the key expires
    after HEARTBEAT_MISSES missed beats, so a dead worker drops out of /readyz."""

    def __init__(self, redis: Redis, settings: Settings, worker_id: str) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.redis = redis
        self.interval = settings.heartbeat_s
        self.key = WORKER_KEY.format(worker_id)
        self.state = Heartbeat(
            worker=worker_id, model=settings.model, ready=False, message="loading the model", at=0
        )
        self.stopped = threading.Event()
        self.lock = threading.Lock()  # job threads change the state

    def update(self, **changes: Any) -> None:
        with self.lock:
            self.state = self.state.model_copy(update=changes)
        self.beat()

    def hold(self, job_id: str) -> None:
        """List a job this worker runs (from its job thread)."""
        with self.lock:
            self.state = self.state.model_copy(update={"jobs": [*self.state.jobs, job_id]})
        self.beat()

    def release(self, job_id: str) -> None:
        with self.lock:
            jobs = [j for j in self.state.jobs if j != job_id]
            self.state = self.state.model_copy(update={"jobs": jobs})
        self.beat()

    def beat(self) -> None:
        state = self.state.model_copy(update={"at": time.time()})
        ttl_ms = math.ceil(1000 * self.interval * HEARTBEAT_MISSES)
        try:
            self.redis.set(self.key, state.model_dump_json(), px=ttl_ms)
        except RedisError as err:
            log.warning("heartbeat not written: %s", err)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self.stopped.set()
        self.redis.delete(self.key)
