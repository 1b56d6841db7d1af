"""`python -m worker.health`: the container healthcheck. Exit 0 when a worker process of this
host (container) has its model loaded; else print why not and exit 1."""

from __future__ import annotations

import sys

from redis import Redis
from redis.exceptions import RedisError

from contract.jobs import WORKER_KEY, Heartbeat
from contract.settings import Settings
from worker.heartbeat import worker_id


def check(redis: Redis) -> str | None:
    """None when healthy, else the reason."""
    keys = list(redis.scan_iter(match=WORKER_KEY.format(worker_id("*"))))
    beats = [Heartbeat.model_validate_json(v) for v in redis.mget(keys) if v] if keys else []
    if any(b.ready for b in beats):
        return None
    return "; ".join(b.message for b in beats) or "no heartbeat from a worker on this host"


def main() -> int:
    try:
        problem = check(Redis.from_url(Settings().redis_url, socket_timeout=3))
    except RedisError as err:
        problem = f"redis: {err}"
    if problem is not None:
        print(problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
