"""A worker process that cannot load its model stays not-ready, says why, and takes no job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from redis import Redis

from cli.embedded import REPO, RedisServer, wait_for
from contract.jobs import MODELS_KEY, WORKER_KEY, Heartbeat
from tests.conftest import FIXTURE_MODEL_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def heartbeats(redis: Redis) -> list[Heartbeat]:
    keys = list(redis.scan_iter(match=WORKER_KEY.format("*")))
    return [Heartbeat.model_validate_json(v) for v in redis.mget(keys) if v] if keys else []


def test_worker_without_its_model_stays_not_ready_and_says_why() -> None:
    with RedisServer() as url:
        env = {
            **os.environ,
            "DDNM_REDIS_URL": url,
            "DDNM_MODEL": "broken",
            "DDNM_MODEL_FILE": "/nonexistent/weights.pt",
            "DDNM_MODEL_CONFIG_FILE": FIXTURE_MODEL_ENV["DDNM_MODEL_CONFIG_FILE"],
            "OMP_NUM_THREADS": "1",
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        redis = Redis.from_url(url)
        try:
            wait_for(
                lambda: any(b.message.startswith("cannot") for b in heartbeats(redis)),
                "a heartbeat saying why the model is not loaded",
                60.0,
            )
            (beat,) = heartbeats(redis)
            assert not beat.ready and beat.model == "broken"
            assert "cannot load model 'broken'" in beat.message
            assert "/nonexistent/weights.pt" in beat.message
            assert redis.hlen(MODELS_KEY) == 0  # never announced, so no job is admitted for it
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            redis.close()
