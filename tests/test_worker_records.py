"""The worker's side of the job records and its heartbeat, on a real Redis, and its Celery
settings."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from redis import Redis

from contract.jobs import (
    JOB_SECONDS,
    STEP_SECONDS,
    WORKER_KEY,
    Heartbeat,
    JobRecord,
    Status,
    job_key,
    transition,
)
from contract.settings import Settings
from ddnm.sampling import StepInfo
from worker.celery_app import configure
from worker.health import check
from worker.heartbeat import HeartbeatThread, worker_id
from worker.records import JobCanceled, JobLost, JobRun, JobTimedOut, WorkerStopping


def queued(redis: Redis, job_id: str = "j") -> None:
    record = JobRecord(
        status=Status.QUEUED, created_at=time.time(), spec="{}", model="m", seed=1, upload_sha256=""
    )
    redis.hset(job_key(job_id), mapping=record.to_redis())


def info(step: int, total: int = 10) -> StepInfo:
    x = torch.zeros(1)
    return StepInfo(step, total, 0, -1, x, x)


def record(redis: Redis, job_id: str = "j") -> JobRecord:
    return JobRecord.from_redis(redis.hgetall(job_key(job_id)))


def events(redis: Redis, job_id: str = "j") -> list[tuple[str, dict]]:
    """The job's events: its stream, or once it has ended, the status events of its history."""
    history = redis.hget(job_key(job_id), "history")
    if history is not None:
        assert not redis.exists(job_key(job_id, "events"))  # progress is gone with the stream
        return [("status", json.loads(data)) for _, data in json.loads(history)]
    entries = redis.xrange(job_key(job_id, "events"))
    return [(f[b"event"].decode(), json.loads(f[b"data"])) for _, f in entries]


def test_claims_a_queued_job_once(redis: Redis) -> None:
    queued(redis)
    assert JobRun(redis, Settings(), "j", "w1").start("ab", 0) is not None
    assert (record(redis).status, record(redis).attempts, record(redis).worker) == (
        Status.RUNNING, 1, "w1",
    )  # fmt: skip
    # the same message delivered twice: the job runs once
    assert JobRun(redis, Settings(), "j", "w2").start("ab", 0) is None
    assert (record(redis).attempts, record(redis).worker) == (1, "w1")


def test_a_job_handed_on_is_not_run_by_its_stale_message_nor_ended_by_its_old_worker(
    redis: Redis,
) -> None:
    queued(redis)
    old = JobRun(redis, Settings(), "j", "w1")
    old.start("ab", 0)
    old.on_step(info(1))
    # the API found w1's heartbeat expired and handed the job on with a new message
    applied, _ = transition(
        redis, "j", Status.QUEUED, (Status.RUNNING,), guard=old.guard, dispatch=1
    )
    assert applied == 1
    assert JobRun(redis, Settings(), "j", "w2").start("ab", 0) is None  # w1's, redelivered
    new = JobRun(redis, Settings(), "j", "w3")
    assert new.start("ab", 1) is not None
    with pytest.raises(JobLost):  # w1 was alive after all: it stops at its next step ..
        old.on_step(info(2))
    old.succeed(b"stale")  # .. and could not end the job had it finished first
    assert (record(redis).status, record(redis).worker, record(redis).attempts) == (
        Status.RUNNING, "w3", 2,
    )  # fmt: skip
    assert not redis.exists(job_key("j", "result"))


def test_a_claim_lost_in_a_redis_crash_is_made_again(redis: Redis) -> None:
    queued(redis)
    run = JobRun(redis, Settings(), "j", "w1")
    run.start("ab", 0)
    run.on_step(info(1))
    # Redis restarted from a file older than the claim: the job is queued again, same message
    redis.hset(job_key("j"), mapping={"status": "queued", "attempts": 0})
    redis.hdel(job_key("j"), "worker")
    run.on_step(info(2))  # claimed again, not abandoned
    assert (record(redis).status, record(redis).worker, record(redis).attempts) == (
        Status.RUNNING, "w1", 1,
    )  # fmt: skip
    run.succeed(b"png")
    assert record(redis).status == Status.SUCCEEDED


def test_skips_canceled_done_and_missing_jobs(redis: Redis) -> None:
    queued(redis)
    redis.hset(job_key("j"), "status", "canceled")
    assert JobRun(redis, Settings(), "j", "w").start("ab", 0) is None
    assert record(redis).status == Status.CANCELED
    assert JobRun(redis, Settings(), "missing", "w").start("ab", 0) is None


def test_cancel_request_stops_at_the_next_step(redis: Redis) -> None:
    queued(redis)
    run = JobRun(redis, Settings(), "j", "w")
    run.start("ab", 0)
    run.on_step(info(1))
    redis.hset(job_key("j"), "cancel_requested_at", time.time())
    with pytest.raises(JobCanceled, match="step 2 of 10"):
        run.on_step(info(2))
    run.cancel()
    assert record(redis).status == Status.CANCELED


def test_a_stopping_worker_puts_its_job_back_in_the_queue(redis: Redis) -> None:
    queued(redis)
    stopping = threading.Event()
    run = JobRun(redis, Settings(), "j", "w1", stopping)
    run.start("ab", 0)
    run.on_step(info(1))
    stopping.set()  # SIGTERM
    with pytest.raises(WorkerStopping, match="step 2 of 10"):
        run.on_step(info(2))
    run.requeue()
    assert (record(redis).status, record(redis).step) == (Status.QUEUED, 0)
    assert JobRun(redis, Settings(), "j", "w2").start("ab", 0) is not None
    assert (record(redis).status, record(redis).attempts) == (Status.RUNNING, 2)
    statuses = [data["status"] for kind, data in events(redis) if kind == "status"]
    assert statuses == ["running", "queued", "running"]


def test_time_limit(redis: Redis) -> None:
    queued(redis)
    run = JobRun(redis, Settings(job_time_limit_s=0.05, visibility_timeout_s=1), "j", "w")
    run.start("ab", 0)
    run.on_step(info(1))
    time.sleep(0.06)
    with pytest.raises(JobTimedOut, match=r"time limit of 0\.05 s"):
        run.on_step(info(2))


def test_progress_is_throttled_and_the_last_step_always_written(redis: Redis) -> None:
    queued(redis)
    run = JobRun(redis, Settings(progress_interval_s=60), "j", "w")
    run.start("ab", 0)
    for step in range(1, 11):
        run.on_step(info(step))
    progress = [data["step"] for kind, data in events(redis) if kind == "progress"]
    assert progress == [1, 10]
    assert (record(redis).step, record(redis).total, record(redis).eta_s) == (10, 10, 0)
    # every step is observed in the histogram, written with the progress
    assert redis.hget(STEP_SECONDS.key, "count") == b"10"


def test_success_stores_the_result_and_expires_the_job(redis: Redis) -> None:
    queued(redis)
    redis.set(job_key("j", "image"), b"upload")
    settings = Settings(job_ttl_s=100)
    run = JobRun(redis, settings, "j", "w")
    run.start("ab", 0)
    run.on_step(info(1, 1))
    run.succeed(b"png bytes", consistency=1e-7)
    done = record(redis)
    assert done.status == Status.SUCCEEDED and done.consistency == 1e-7
    assert done.checkpoint_sha256 == "ab" and done.finished_at is not None
    assert redis.get(job_key("j", "result")) == b"png bytes"
    for part in ("", "result"):
        assert 0 < redis.ttl(job_key("j", part)) <= 100, part
    assert not redis.exists(job_key("j", "image"))  # deleted as the job ends
    assert [data["status"] for kind, data in events(redis) if kind == "status"] == [
        "running", "succeeded",
    ]  # fmt: skip
    assert redis.hget(JOB_SECONDS.key, "count") == b"1"


def test_failure_records_the_error(redis: Redis) -> None:
    queued(redis)
    run = JobRun(redis, Settings(), "j", "w")
    run.start("ab", 0)
    run.fail("ValueError: bad")
    assert (record(redis).status, record(redis).error) == (Status.FAILED, "ValueError: bad")


def test_heartbeat_announces_state_and_expires(redis: Redis) -> None:
    beat = HeartbeatThread(redis, Settings(heartbeat_s=0.2), "w1")
    beat.beat()
    beat.start()
    key = WORKER_KEY.format("w1")
    state = Heartbeat.model_validate_json(redis.get(key) or b"")
    assert not state.ready and state.message == "loading the model"
    beat.update(ready=True, message="", jobs=["j"])
    state = Heartbeat.model_validate_json(redis.get(key) or b"")
    assert state.ready and state.jobs == ["j"]
    assert 0 < redis.pttl(key) <= 600  # three beats
    first, deadline = state.at, time.monotonic() + 10.0
    while Heartbeat.model_validate_json(redis.get(key) or b"").at == first:  # still beating?
        assert time.monotonic() < deadline, "no beat after the update"
        time.sleep(0.05)
    beat.stop()
    assert redis.get(key) is None


def test_container_healthcheck(redis: Redis) -> None:
    assert check(redis) == "no heartbeat from a worker on this host"
    loading = Heartbeat(worker=worker_id(1), model="m", ready=False, message="no GPU", at=0)
    redis.set(WORKER_KEY.format(worker_id(1)), loading.model_dump_json())
    redis.set(
        WORKER_KEY.format("elsewhere-2"),
        loading.model_copy(update={"ready": True}).model_dump_json(),
    )
    assert check(redis) == "no GPU"  # another host's worker does not make this one healthy
    ready = loading.model_copy(update={"worker": worker_id(2), "ready": True})
    redis.set(WORKER_KEY.format(worker_id(2)), ready.model_dump_json())
    assert check(redis) is None


def test_celery_is_set_for_long_jobs() -> None:
    settings = Settings(job_time_limit_s=100, visibility_timeout_s=150, redelivery_check_s=2)
    conf = configure(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    transport = conf.broker_transport_options
    assert transport["visibility_timeout"] == 150 and transport["unacked_restore_interval"] == 2
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.broker_url == settings.redis_url


def test_a_job_past_its_deadline_expires_instead_of_starting(redis: Redis) -> None:
    queued(redis)
    redis.hset(job_key("j"), "deadline_at", time.time() - 1)
    assert JobRun(redis, Settings(), "j", "w").start("ab", 0) is None
    expired = record(redis)
    assert (expired.status, expired.attempts, expired.worker) == (Status.EXPIRED, 0, None)
    assert [data["status"] for kind, data in events(redis)] == ["expired"]


def test_previews_of_x0_are_throttled_small_pngs(redis: Redis) -> None:
    import base64
    import io

    from PIL import Image

    queued(redis)
    run = JobRun(redis, Settings(preview_interval_s=0.5, progress_interval_s=60), "j", "w")
    run.start("ab", 0)
    x0 = torch.linspace(-1, 1, 3 * 256 * 200).reshape(1, 3, 256, 200)
    for step in range(1, 6):
        run.on_step(StepInfo(step, 10, 0, -1, x0, x0))
    time.sleep(0.55)
    run.on_step(StepInfo(6, 10, 0, -1, x0, x0))
    run.on_step(StepInfo(7, 10, 0, -1, x0, x0))  # within the interval again
    previews = [data for kind, data in events(redis) if kind == "preview"]
    assert [p["step"] for p in previews] == [6]  # none before one interval, then throttled
    image = Image.open(io.BytesIO(base64.b64decode(previews[0]["png"])))
    assert image.size == (100, 128) and image.mode == "RGB"  # the longer side at most 128
