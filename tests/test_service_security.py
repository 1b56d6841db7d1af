"""Keys, ownership, admission limits, the reaper of dead workers' jobs, and browser-facing safety,
against a real Redis with the app in-process (Starlette's TestClient). The drills with real
worker processes are in test_service_drills.py."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import OutOfMemoryError

from cli.embedded import RedisServer, wait_for
from contract.jobs import (
    ACTIVE_KEY,
    MAX_ATTEMPTS,
    MODELS_KEY,
    WEBHOOKS_KEY,
    WORKER_KEY,
    Heartbeat,
    JobRecord,
    Status,
    job_key,
    queue_name,
    transition,
)
from contract.settings import Settings
from service.main import create_app
from tests.test_service_api import BASE_URL, MODEL, SR4, job_keys, parse_events, request

ALICE, BOB = "alice-key-0123456789", "bob-key-9876543210"
AS_ALICE = {"Authorization": f"Bearer {ALICE}"}
AS_BOB = {"X-API-Key": BOB}


@pytest.fixture
def redis(redis: Redis) -> Redis:
    redis.hset(MODELS_KEY, MODEL.name, MODEL.model_dump_json())
    return redis


def app_client(redis_url: str, **settings: object) -> TestClient:
    return TestClient(
        create_app(Settings(redis_url=redis_url, model=MODEL.name, **settings)),  # type: ignore[arg-type]
        base_url=BASE_URL,
    )


@pytest.fixture
def keyed(redis: Redis, redis_url: str) -> Iterator[TestClient]:
    bob_digest = hashlib.sha256(BOB.encode()).hexdigest()
    with app_client(redis_url, api_keys=f"{ALICE}, sha256:{bob_digest}") as c:
        yield c


def submit(client: TestClient, headers: dict[str, str], **kwargs: object) -> str:
    response = client.post("/restore", headers=headers, **request(), **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_missing_or_invalid_key_is_401(keyed: TestClient, redis: Redis) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"X-API-Key": ""},
        {"Authorization": ALICE},
    ):
        response = keyed.post("/restore", headers=headers, **request())
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert "API key" in response.json()["detail"]
        assert keyed.get(f"/jobs/{'0' * 32}", headers=headers).status_code == 401
        assert keyed.get("/models", headers=headers).status_code == 401
    assert job_keys(redis) == []


def test_another_keys_job_does_not_exist_on_any_route(keyed: TestClient) -> None:
    job_id = submit(keyed, AS_ALICE)
    assert keyed.get(f"/jobs/{job_id}", headers=AS_ALICE).json()["status"] == "queued"
    for method, path in (
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/events"),
        ("GET", f"/jobs/{job_id}/result"),
        ("DELETE", f"/jobs/{job_id}"),
    ):
        response = keyed.request(method, path, headers=AS_BOB)
        assert response.status_code == 404, (method, path)
        assert response.json()["detail"].startswith(f"no job {job_id} (unknown")
    assert (
        keyed.get(f"/jobs/{job_id}", headers=AS_ALICE).json()["status"] == "queued"
    )  # not canceled
    assert keyed.delete(f"/jobs/{job_id}", headers=AS_ALICE).status_code == 202


def test_idempotency_keys_are_scoped_per_api_key(keyed: TestClient) -> None:
    same = {"Idempotency-Key": "order-1"}
    alice = submit(keyed, AS_ALICE | same)
    bob = submit(keyed, AS_BOB | same)  # Bob cannot squat nor read Alice's key
    assert alice != bob
    assert submit(keyed, AS_ALICE | same) == alice
    empty = keyed.post("/restore", headers=AS_ALICE | {"Idempotency-Key": ""}, **request())
    assert empty.status_code == 422 and "idempotency-key" in empty.json()["detail"]


def test_readiness_names_workers_only_to_a_caller_with_a_key(
    keyed: TestClient, redis: Redis
) -> None:
    beat = Heartbeat(
        worker="gpu-host-7-123", model=MODEL.name, ready=True, info=MODEL, at=0, jobs=["f" * 32]
    )
    redis.set(WORKER_KEY.format(beat.worker), beat.model_dump_json(), ex=10)
    anonymous = keyed.get("/readyz")
    assert anonymous.status_code == 200
    assert anonymous.json() == {
        "ready": True, "redis": True, "workers_ready": 1, "workers": None, "problems": [],
    }  # fmt: skip
    detailed = keyed.get("/readyz", headers=AS_ALICE).json()
    assert [w["worker"] for w in detailed["workers"]] == ["gpu-host-7-123"]
    assert "f" * 32 not in json.dumps(detailed)  # no job ids, even with a key


def test_rate_limit_quota_and_queue_cap(redis: Redis, redis_url: str) -> None:
    with app_client(redis_url, api_keys=f"{ALICE},{BOB}", rate_limit_per_minute=3) as c:
        for _ in range(3):
            submit(c, AS_ALICE)
        over = c.post("/restore", headers=AS_ALICE, **request())
        assert over.status_code == 429
        assert 1 <= int(over.headers["retry-after"]) <= 61
        assert "rate limit of 3 jobs a minute" in over.json()["detail"]
        submit(c, AS_BOB)  # another key has its own budget
    redis.flushdb()
    redis.hset(MODELS_KEY, MODEL.name, MODEL.model_dump_json())
    with app_client(
        redis_url, api_keys=f"{ALICE},{BOB}", max_active_jobs_per_key=2, max_queued_jobs=3
    ) as c:
        first = submit(c, AS_ALICE)
        submit(c, AS_ALICE)
        quota = c.post("/restore", headers=AS_ALICE, **request())
        assert quota.status_code == 429 and quota.headers["retry-after"] == "10"
        assert "2 unfinished jobs, its quota" in quota.json()["detail"]
        c.delete(f"/jobs/{first}", headers=AS_ALICE)  # an ended job frees its place
        submit(c, AS_ALICE)
        submit(c, AS_BOB)
        full = c.post("/restore", headers=AS_BOB, **request())
        assert full.status_code == 503 and full.headers["retry-after"] == "10"
        assert "queue is at its limit" in full.json()["detail"]
    assert redis.zcard(ACTIVE_KEY) == 3 and redis.llen(queue_name(MODEL.name)) == 4


def test_redis_at_its_memory_cap_is_a_clean_503_with_nothing_half_stored() -> None:
    with RedisServer(maxmemory="3mb") as url:
        r = Redis.from_url(url)
        r.hset(MODELS_KEY, MODEL.name, MODEL.model_dump_json())
        with app_client(url) as c:
            submit(c, {})  # room for one
            filler = 0
            for size in (100_000, 1_000, 10):  # fill Redis to its cap, to the last bytes
                with contextlib.suppress(OutOfMemoryError):
                    while True:
                        r.set(f"filler:{filler}", b"x" * size)
                        filler += 1
            before = sorted(r.keys("ddnm:*"))
            response = c.post("/restore", **request())
            assert response.status_code == 503
            assert response.json()["detail"] == "the job store is full; retry later"
            assert response.headers["retry-after"] == "2"
            assert sorted(r.keys("ddnm:*")) == before  # no record, upload or count of a job
        r.close()


def running_job(redis: Redis, job_id: str, worker: str, attempts: int = 1) -> None:
    record = JobRecord(
        status=Status.QUEUED, created_at=time.time(), spec=json.dumps(SR4), model=MODEL.name,
        seed=1, upload_sha256="", owner="open",
    )  # fmt: skip
    redis.hset(job_key(job_id), mapping=record.to_redis())
    redis.zadd(ACTIVE_KEY, {job_id: time.time()})
    redis.zadd(f"{ACTIVE_KEY}:open", {job_id: time.time()})
    transition(redis, job_id, Status.RUNNING, (Status.QUEUED,), worker=worker, attempts=attempts)


def record(redis: Redis, job_id: str) -> JobRecord:
    return JobRecord.from_redis(redis.hgetall(job_key(job_id)))


def test_the_reaper_hands_a_dead_workers_job_back_and_fails_it_at_the_attempt_cap(
    redis: Redis, redis_url: str
) -> None:
    alive = Heartbeat(worker="alive", model=MODEL.name, ready=True, at=0)
    redis.set(WORKER_KEY.format("alive"), alive.model_dump_json(), ex=30)
    running_job(redis, "a" * 32, "alive")
    running_job(redis, "d" * 32, "dead")
    running_job(redis, "c" * 32, "dead", attempts=MAX_ATTEMPTS)
    with app_client(redis_url) as c:
        store = c.app.state.store  # type: ignore[attr-defined]
        assert c.portal is not None
        handled = c.portal.call(store.reap)
    assert handled == dict.fromkeys(["d" * 32, "c" * 32], "handed back: its worker died")
    assert record(redis, "a" * 32).status == Status.RUNNING  # its worker beats
    handed = record(redis, "d" * 32)
    assert (handed.status, handed.dispatch, handed.attempts) == (Status.QUEUED, 1, 1)
    (message,) = redis.lrange(queue_name(MODEL.name), 0, -1)
    args, _, _ = json.loads(base64.b64decode(json.loads(message)["body"]))
    assert args == ["d" * 32, 1]  # a new message: the dead worker's, redelivered, is stale
    failed = record(redis, "c" * 32)
    assert failed.status == Status.FAILED
    assert failed.error == f"its worker was lost in each of {MAX_ATTEMPTS} attempts; not run again"
    assert redis.zrange(ACTIVE_KEY, 0, -1) == [b"a" * 32, b"d" * 32]


def test_the_reaper_repairs_what_a_redis_crash_can_leave(redis: Redis, redis_url: str) -> None:
    """A running job its live worker does not hold (its end was lost), and a queued job whose
    message is gone (taken by a worker as Redis crashed)."""
    beat = Heartbeat(worker="alive", model=MODEL.name, ready=True, at=0, jobs=["h" * 32])
    redis.set(WORKER_KEY.format("alive"), beat.model_dump_json(), ex=30)
    running_job(redis, "h" * 32, "alive")  # held: left alone
    running_job(redis, "o" * 32, "alive")  # not held, started long ago: orphaned
    redis.hset(job_key("o" * 32), "started_at", time.time() - 60)
    running_job(redis, "q" * 32, "alive")
    redis.hset(job_key("q" * 32), mapping={"status": "queued", "created_at": time.time() - 600})
    with app_client(redis_url, redispatch_s=30) as c:
        assert c.portal is not None
        store = c.app.state.store  # type: ignore[attr-defined]
        assert c.portal.call(store.reap) == {
            "o" * 32: "handed back: orphaned", "q" * 32: "its lost task message sent again",
        }  # fmt: skip
        # the resent message sits in the queue now: not sent again
        assert c.portal.call(store.reap) == {}
    messages = [json.loads(base64.b64decode(json.loads(m)["body"]))[0] for m in
                redis.lrange(queue_name(MODEL.name), 0, -1)]  # fmt: skip
    assert sorted(messages) == [["o" * 32, 1], ["q" * 32, 0]]  # "q": the same dispatch
    assert record(redis, "h" * 32).status == Status.RUNNING
    assert record(redis, "o" * 32).status == Status.QUEUED


def test_cancel_of_a_job_whose_worker_died_ends_it_at_once(redis: Redis, redis_url: str) -> None:
    running_job(redis, "d" * 32, "dead")
    with app_client(redis_url) as c:
        canceled = c.delete(f"/jobs/{'d' * 32}")
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"


def test_host_header_cross_origin_writes_and_cors(redis: Redis, redis_url: str) -> None:
    with app_client(redis_url) as c:  # open: loopback names only, no cross-site writes
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 400
        assert c.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
        cross = {"Origin": "http://evil.example"}
        refused = c.post("/restore", headers=cross, **request())
        assert refused.status_code == 403 and "need an API key" in refused.json()["detail"]
        site = c.post("/restore", headers={"Sec-Fetch-Site": "cross-site"}, **request())
        assert site.status_code == 403
        same = c.post("/restore", headers={"Origin": BASE_URL}, **request())
        assert same.status_code == 202
        assert "access-control-allow-origin" not in same.headers  # CORS off by default
    ui = "https://ui.example"
    with app_client(redis_url, cors_origins=ui, api_keys=ALICE) as c:
        preflight = c.options(
            "/restore",
            headers={"Origin": ui, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization"},
        )  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ui
        assert c.post("/restore", headers={"Origin": ui}, **request()).status_code == 401


def test_events_end_after_the_final_status_even_when_resumed_past_it(
    redis: Redis, redis_url: str
) -> None:
    with app_client(redis_url) as c:
        job_id = c.post("/restore", **request()).json()["id"]
        c.delete(f"/jobs/{job_id}")
        events = parse_events(c.get(f"/jobs/{job_id}/events").text)
        last = events[-1]["id"]
        assert c.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": last}).text == ""


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on loopback that answers 500 to its first `failures` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(receiver.calls) < receiver.failures else 204
                receiver.calls.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


def test_webhook_signed_retried_with_backoff_and_recorded(redis: Redis, redis_url: str) -> None:
    receiver = Receiver(failures=2)
    settings = {"api_keys": ALICE, "webhook_hosts": "127.0.0.1", "webhook_backoff_s": 0.3}
    with app_client(redis_url, **settings) as c:
        refused = c.post(
            "/restore", headers=AS_ALICE, data={"webhook": "http://10.0.0.1/x"}, **request()
        )
        assert refused.status_code == 422 and "is not one of ['127.0.0.1']" in refused.text
        job_id = submit(c, AS_ALICE, data={"webhook": receiver.url})
        c.delete(f"/jobs/{job_id}", headers=AS_ALICE)  # ends it: canceled
        wait_for(lambda: len(receiver.calls) == 3, "three webhook calls", 10.0)
        job = c.get(f"/jobs/{job_id}", headers=AS_ALICE).json()
    receiver.shutdown()
    assert [d["status"] for d in job["webhook_deliveries"]] == [500, 500, 204]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(job["webhook_deliveries"])]
    assert 0.3 <= gaps[0] < gaps[1] and gaps[1] >= 0.6  # the backoff doubles
    secret = hashlib.sha256(ALICE.encode()).hexdigest()  # the key's digest
    for headers, body, _ in receiver.calls:
        timestamp = int(headers["X-DDNM-Timestamp"])
        expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        assert headers["X-DDNM-Signature"] == f"v1={expected.hexdigest()}"
        assert abs(time.time() - timestamp) < 30
        assert json.loads(body)["id"] == job_id and json.loads(body)["status"] == "canceled"
    assert not redis.zcard(WEBHOOKS_KEY)  # delivered: no longer due


def test_a_job_not_started_by_its_deadline_expires(redis: Redis, redis_url: str) -> None:
    with app_client(redis_url) as c:
        job = c.post("/restore", **request({**SR4, "deadline_s": 0.5, "priority": 7})).json()
        assert job["spec"]["deadline_s"] == 0.5 and job["spec"]["priority"] == 7
        time.sleep(0.6)
        assert c.portal is not None
        store = c.app.state.store  # type: ignore[attr-defined]
        assert c.portal.call(store.reap) == {job["id"]: "expired: not started by its deadline"}
        expired = c.get(f"/jobs/{job['id']}").json()
    assert expired["status"] == "expired" and "deadline" in expired["error"]
    assert not redis.exists(job_key(job["id"], "image")) and not redis.zcard(ACTIVE_KEY)
