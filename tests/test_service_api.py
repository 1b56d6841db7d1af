"""The API against a real Redis, without workers: admission and its refusals, idempotency, job
records, cancellation of queued jobs, events, readiness and metrics. The app runs in-process
(Starlette's TestClient); the end-to-end tests with uvicorn and workers are in
test_service_integration.py."""

from __future__ import annotations

import io
import json
import random
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError
from PIL import Image
from redis import Redis
from skimage import data

from cli.embedded import REPO, RedisServer
from contract.jobs import (
    IDEMPOTENCY_KEY,
    MODELS_KEY,
    OPEN_OWNER,
    WORKER_KEY,
    Heartbeat,
    JobRecord,
    ModelInfo,
    job_key,
    queue_name,
)
from contract.settings import Settings
from service.jobs import ADMISSION_LEASE_S
from service.main import create_app

MODEL = ModelInfo(name="test-model", checkpoint_sha256="00" * 32, image_size=32)
MAX_PIXELS = 100_000
MAX_UPLOAD_BYTES = 300_000
MAX_OUTPUT_PIXELS = 1_000_000
BASE_URL = "http://127.0.0.1"  # an open API serves loopback names only
LIMITS_ENV = {"DDNM_MAX_PIXELS": str(MAX_PIXELS), "DDNM_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}


def png(array: np.ndarray, format: str = "PNG", **options: Any) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=format, **options)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds next to none: a decompression
    bomb's header (decoding it would allocate 3 * width * height bytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def crop(size: int = 32) -> np.ndarray:
    """A real photo: (size, size, 3) uint8 crop of skimage's astronaut."""
    return data.astronaut()[100 : 100 + size, 180 : 180 + size]


def box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    h, w, c = image.shape
    blocks = image.astype(np.float64).reshape(h // factor, factor, w // factor, factor, c)
    return blocks.mean(axis=(1, 3))


SR4 = {"degradations": [{"op": "downsample", "factor": 4}], "steps": 10}
INPAINT = {"degradations": [{"op": "inpaint"}], "steps": 10}
Y8 = png(box_downsample(crop(), 4).round().astype(np.uint8))
MASK = np.full((32, 32), 255, np.uint8)
MASK[8:20, 10:24] = 0


def request(spec: Any = SR4, image: bytes | None = Y8, mask: bytes | None = None) -> dict:
    """httpx keyword arguments of a multipart POST /restore, as `curl -F` sends it (spec: dict,
    raw text or None; a part without file name is a text field)."""
    files: dict[str, tuple] = {}
    if spec is not None:
        files["spec"] = (None, spec if isinstance(spec, str) else json.dumps(spec))
    if image is not None:
        files["image"] = ("y.png", image, "image/png")
    if mask is not None:
        files["mask"] = ("mask.png", mask, "image/png")
    return {"files": files}


# (name, request, status, what the message must say)
BAD_INPUTS = [
    ("not an image", request(image=b"hello, world"), 422, "image: not an image"),
    ("truncated PNG", request(image=Y8[: len(Y8) // 2]), 422, "damaged or truncated"),
    ("GIF", request(image=png(np.zeros((8, 8), np.uint8), "GIF")), 422, "GIF is not accepted"),
    ("missing image", request(image=None), 422, "image: missing"),
    ("missing spec", request(spec=None), 422, "spec: missing"),
    ("spec not JSON", request(spec="{degradations: ["), 422, "spec: not valid JSON"),
    (
        "unknown op",
        request({"degradations": [{"op": "sharpen"}]}),
        422,
        "does not match any of the expected tags: 'downsample'",
    ),
    (
        "steps out of range",
        request({**SR4, "steps": 5000}),
        422,
        "spec: steps: Input should be less than or equal to 1000",
    ),
    (
        "factor not dividing",
        request({"degradations": [{"op": "downsample", "factor": 3}]}),
        422,
        "window side 32 is no multiple of the chain's downsampling factor 3",
    ),
    (
        "size the chain cannot take",
        request({**SR4, "evaluate": True}, png(crop(30))),
        422,
        "image: a 30x30 clean image does not fit the chain: downsample factor 4 does not divide",
    ),
    (
        "blur kernel larger than the image",
        request({"degradations": [{"op": "blur", "sigma": 10.0}]}, png(crop(32))),
        422,
        "the 61x61 blur kernel is larger than the 32x32 image it blurs",
    ),
    (
        "blur tiled by Mask-Shift",
        request({"degradations": [{"op": "blur"}], "tiling": "mask_shift"}, png(crop(64))),
        422,
        "tiling mask_shift restricts the chain to each window",
    ),
    (
        "mask of the wrong size",
        request(INPAINT, png(crop()), png(MASK[:16, :16])),
        422,
        "mask: 16x16 does not match the 32x32 image",
    ),
    ("missing mask", request(INPAINT, png(crop())), 422, "mask: missing"),
    ("mask without inpaint", request(mask=png(MASK)), 422, "the chain has no"),
    (
        "mask without known pixel",
        request(INPAINT, png(crop()), png(np.zeros((32, 32), np.uint8))),
        422,
        "mask: no known pixel",
    ),
    ("unknown model", request({**SR4, "model": "nope"}), 422, "unknown model 'nope'"),
    (
        "cs without evaluate",
        request({"degradations": [{"op": "cs", "ratio": 0.25}]}),
        422,
        "spec: cs coefficients cannot be uploaded as an image: send the clean image",
    ),
    ("too many pixels", request(image=png(np.zeros((400, 400, 3), np.uint8))), 413, "pixels"),
    (
        "bomb over the pixel limit",
        request(image=png_header_only(5_000, 5_000)),
        413,
        "5000x5000 is over the limit of 100000 pixels",
    ),
    ("bomb over Pillow's limit", request(image=png_header_only(60_000, 60_000)), 413, "bomb"),
    (
        "16-bit image",
        request(image=png((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16))),
        422,
        "image: pixels of more than 8 bits are not accepted; send an 8-bit image",
    ),
    (
        "grey mask, nothing brighter than mid-grey",
        request(INPAINT, png(crop()), png(np.full((32, 32), 127, np.uint8))),
        422,
        "mask: no known pixel",
    ),
    ("JSON body", {"json": {"spec": SR4}}, 415, "takes multipart/form-data"),
    (
        "spec sent as a file",
        {"files": {"image": ("y.png", Y8, "image/png"), "spec": ("s.json", json.dumps(SR4))}},
        422,
        "spec: Input should be a valid string; POST /restore takes multipart/form-data",
    ),
    ("too many bytes", request(image=b"x" * (MAX_UPLOAD_BYTES + 1)), 413, "over the limit"),
]


def job_keys(redis: Redis) -> list[bytes]:
    return list(redis.scan_iter(match=job_key("*")))


@pytest.fixture
def redis(redis: Redis) -> Redis:
    """The empty Redis of conftest, with one model announced."""
    redis.hset(MODELS_KEY, MODEL.name, MODEL.model_dump_json())
    return redis


@pytest.fixture
def client(redis: Redis, redis_url: str) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url,
        model=MODEL.name,
        max_pixels=MAX_PIXELS,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_output_pixels=MAX_OUTPUT_PIXELS,
        # the hundreds of requests here are not what the admission limits are tested with
        rate_limit_per_minute=10**6,
        max_active_jobs_per_key=10**6,
    )
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        yield c


def test_service_never_imports_torch() -> None:
    code = (
        "import sys; import contract, service.main, cli.embedded, cli.main;"
        "from contract.settings import Settings; service.main.create_app(Settings());"
        "cli.main.build_parser();"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize(("name", "kwargs", "status", "message"), BAD_INPUTS)
def test_bad_input_is_refused_and_nothing_enqueued(
    client: TestClient, redis: Redis, name: str, kwargs: dict, status: int, message: str
) -> None:
    response = client.post("/restore", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert job_keys(redis) == []
    assert redis.llen(queue_name(MODEL.name)) == 0


def test_admission_stores_the_job_and_enqueues_it(client: TestClient, redis: Redis) -> None:
    response = client.post("/restore", **request())
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["spec"]["model"] == MODEL.name and job["seed"] == job["spec"]["seed"] is not None
    assert job["spec"]["steps"] == 10 and job["spec"]["eta"] == 0.85
    assert redis.get(job_key(job["id"], "image")) == Y8  # the bytes, not base64 in JSON
    assert b"image" not in redis.hkeys(job_key(job["id"]))
    assert redis.llen(queue_name(MODEL.name)) == 1
    message = json.loads(redis.lindex(queue_name(MODEL.name), 0))
    assert message["headers"]["task"] == "ddnm.restore"
    assert message["content-type"] == "application/json"
    assert client.get(f"/jobs/{job['id']}").json() == job


def test_any_size_is_admitted_with_its_plan_and_predicted_cost(
    client: TestClient, redis: Redis
) -> None:
    """A 32 x 128 observation of 4x SR restores to 128 x 512: 7 x 31 windows of 32 (overlap
    16), 43 Mask-Shift waves, 217 windows x 10 steps predicted, all in the job record."""
    y = np.asarray(Image.fromarray(data.astronaut()).resize((128, 32)))
    job = client.post("/restore", **request(image=png(y))).json()
    assert (job["width"], job["height"]) == (512, 128)
    assert job["plan"] == {"window": 32, "overlap": 16, "windows": 217, "waves": 43}
    assert job["predicted_evaluations"] == 217 * 10
    record = JobRecord.from_redis(redis.hgetall(job_key(job["id"])))
    assert record.predicted_evaluations == 2170 and json.loads(record.plan or "") == job["plan"]
    native = client.post("/restore", **request()).json()
    assert native["plan"] is None and native["predicted_evaluations"] == 10


def test_a_job_over_the_budget_is_refused_with_its_predicted_cost(
    redis: Redis, redis_url: str
) -> None:
    """A 2048 x 2048 output (4x SR of 512 x 512) at 100 steps, default limits: 127 x 127 windows,
    1,612,900 predicted evaluations, over the default budget of 1,000,000; nothing stored or
    queued."""
    y = np.asarray(Image.fromarray(data.astronaut()).resize((512, 512)))
    spec = {**SR4, "steps": 100}
    with TestClient(
        create_app(Settings(redis_url=redis_url, model=MODEL.name)), base_url=BASE_URL
    ) as c:
        response = c.post("/restore", **request(spec, png(y)))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "predicted 1612900 network evaluations (16129 windows of 32x32 x 100 calls" in detail
    assert "over the budget of 1000000" in detail
    assert job_keys(redis) == [] and redis.llen(queue_name(MODEL.name)) == 0


def test_a_restored_image_over_the_pixel_limit_is_refused(client: TestClient) -> None:
    y = np.zeros((300, 300, 3), np.uint8)  # 90,000 pixels in, 1,440,000 out with 4x SR
    response = client.post("/restore", **request({**SR4, "steps": 1}, png(y)))
    assert response.status_code == 413, response.text
    assert "would be 1200x1200 = 1440000 pixels, over the limit" in response.json()["detail"]


@pytest.mark.parametrize(
    "options", [{"format": "PNG"}, {"format": "JPEG", "quality": 95}, {"format": "WEBP"},
                {"format": "MPO", "save_all": True, "append_images": [Image.new("RGB", (8, 8))]}],
    ids=["PNG", "JPEG", "WebP", "MPO"],
)  # fmt: skip
def test_accepted_image_formats(client: TestClient, options: dict) -> None:
    y = box_downsample(crop(), 4).round().astype(np.uint8)
    response = client.post("/restore", **request(image=png(y, **options)))
    assert response.status_code == 202, response.text


def test_a_given_seed_is_kept(client: TestClient) -> None:
    assert client.post("/restore", **request({**SR4, "seed": 1234})).json()["seed"] == 1234


def test_idempotency_key(client: TestClient, redis: Redis) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = client.post("/restore", headers=headers, **request())
    again = client.post("/restore", headers=headers, **request())
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert redis.llen(queue_name(MODEL.name)) == 1
    other = client.post("/restore", headers=headers, **request({**SR4, "steps": 11}))
    assert other.status_code == 422
    assert "already used for a different request" in other.json()["detail"]
    fresh = client.post("/restore", headers={"Idempotency-Key": "order-18"}, **request())
    assert fresh.json()["id"] != first.json()["id"]


def test_a_job_that_cannot_be_queued_fails_and_frees_its_idempotency_key(
    client: TestClient, redis: Redis
) -> None:
    store = client.app.state.store
    send = store.enqueue

    def broker_down(job_id: str, queue: str, dispatch: int) -> None:
        raise OperationalError("Error 111 connecting to the broker")

    # the broker is the job store's Redis, so it cannot fail alone here: a stand-in that does
    store.enqueue = broker_down
    headers = {"Idempotency-Key": "order-19"}
    refused = client.post("/restore", headers=headers, **request())
    assert refused.status_code == 503 and "retry later" in refused.json()["detail"]
    (record_key,) = [k for k in job_keys(redis) if k.count(b":") == 2]
    assert redis.hget(record_key, "status") == b"failed"  # not left queued forever
    assert b"submit it again" in redis.hget(record_key, "error")
    store.enqueue = send
    again = client.post("/restore", headers=headers, **request())
    assert again.status_code == 202
    assert job_key(again.json()["id"]).encode() != record_key
    assert redis.llen(queue_name(MODEL.name)) == 1
    assert (
        redis.ttl(IDEMPOTENCY_KEY.format(OPEN_OWNER, "order-19")) > ADMISSION_LEASE_S
    )  # kept with the job


def test_cancel_a_queued_job(client: TestClient) -> None:
    job_id = client.post("/restore", **request()).json()["id"]
    assert client.get(f"/jobs/{job_id}/result").status_code == 409
    canceled = client.delete(f"/jobs/{job_id}")
    assert canceled.status_code == 202
    body = canceled.json()
    assert body["status"] == "canceled" and body["cancel_requested"]
    assert body["finished_at"] is not None
    again = client.delete(f"/jobs/{job_id}")
    assert again.status_code == 409 and "already canceled" in again.json()["detail"]


def test_unknown_and_malformed_job_ids(client: TestClient) -> None:
    assert client.get(f"/jobs/{'0' * 32}").status_code == 404
    assert client.get(f"/jobs/{'0' * 32}/result").status_code == 404
    assert client.delete(f"/jobs/{'0' * 32}").status_code == 404
    malformed = client.get("/jobs/not-an-id")
    assert malformed.status_code == 422
    assert malformed.json() == {"detail": "job_id: String should match pattern '^[0-9a-f]{32}$'"}


def parse_events(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append({**fields, "data": json.loads(fields["data"])})
    return events


def test_events_of_an_ended_job_and_resume(client: TestClient) -> None:
    job_id = client.post("/restore", **request()).json()["id"]
    client.delete(f"/jobs/{job_id}")
    response = client.get(f"/jobs/{job_id}/events")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    assert [e["data"]["status"] for e in events] == ["queued", "canceled"]
    resumed = client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": events[0]["id"]})
    assert parse_events(resumed.text) == events[1:]
    assert client.get(f"/jobs/{'0' * 32}/events").status_code == 404


def test_models_readiness_and_heartbeats(client: TestClient, redis: Redis) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    (model,) = client.get("/models").json()
    assert model["name"] == MODEL.name and model["default"] and model["workers_ready"] == 0
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert "no worker with a loaded model" in not_ready.json()["problems"]
    loading = Heartbeat(worker="w1", model=MODEL.name, ready=False, message="no GPU", at=0)
    redis.set(WORKER_KEY.format("w1"), loading.model_dump_json(), ex=10)
    assert "worker w1: no GPU" in client.get("/readyz").json()["problems"]
    ready = loading.model_copy(update={"worker": "w2", "ready": True, "info": MODEL})
    redis.set(WORKER_KEY.format("w2"), ready.model_dump_json(), ex=10)
    assert client.get("/readyz").status_code == 200
    assert client.get("/models").json()[0]["workers_ready"] == 1


def test_ready_without_workers_once_a_model_was_announced(redis: Redis, redis_url: str) -> None:
    """With workers that scale from zero (deploy/: KEDA), the API stays ready, and admits jobs,
    while no worker runs, once a worker has announced its model; before that it is not."""
    settings = Settings(redis_url=redis_url, model=MODEL.name, ready_without_workers=True)
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["workers_ready"] == 0
        assert c.post("/restore", **request()).status_code == 202
        redis.delete(MODELS_KEY)
        time.sleep(1.1)  # the API caches the announced models for 1 s
        assert c.get("/readyz").status_code == 503


def test_no_announced_model_means_retry_later(client: TestClient, redis: Redis) -> None:
    redis.delete(MODELS_KEY)
    response = client.post("/restore", **request())
    assert response.status_code == 503 and "retry" in response.json()["detail"]


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def test_metrics_count_jobs_and_queue_depth(client: TestClient) -> None:
    job_id = client.post("/restore", **request()).json()["id"]
    client.post("/restore", **request())
    client.delete(f"/jobs/{job_id}")
    text = client.get("/metrics").text
    assert metric(text, 'ddnm_jobs_total{status="queued"}') == 2
    assert metric(text, 'ddnm_jobs_total{status="canceled"}') == 1
    assert metric(text, 'ddnm_jobs_total{status="succeeded"}') == 0
    # the canceled job's message stays queued until a worker drops it
    assert metric(text, f'ddnm_queue_depth{{model="{MODEL.name}"}}') == 2
    assert "# TYPE ddnm_step_seconds histogram" in text
    assert metric(text, 'ddnm_step_seconds_bucket{le="+Inf"}') == 0


def test_oversized_request_body_is_refused_before_reading(client: TestClient, redis: Redis) -> None:
    limit = 2 * MAX_UPLOAD_BYTES + 2**20  # two files and the spec
    body = b"x" * (limit + 1)
    response = client.post("/restore", content=body, headers={"content-type": "text/plain"})
    assert response.status_code == 413
    assert response.json()["detail"] == f"request body over the limit of {limit} bytes"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted as they come
        yield b"--b\r\nContent-Disposition: form-data; name=image; filename=y.png\r\n\r\n"
        for _ in range(limit // 2**16 + 2):
            yield b"x" * 2**16

    streamed = client.post(
        "/restore", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert streamed.status_code == 413
    assert streamed.json()["detail"] == f"request body over the limit of {limit} bytes"
    assert job_keys(redis) == []


def test_job_record_expires_after_the_job_ends_and_its_upload_at_once(
    client: TestClient, redis: Redis
) -> None:
    job_id = client.post("/restore", **request()).json()["id"]
    pending = redis.ttl(job_key(job_id))
    assert 0 < redis.ttl(job_key(job_id, "image")) <= pending
    client.delete(f"/jobs/{job_id}")
    ended = redis.ttl(job_key(job_id))
    settings = Settings()
    assert settings.job_ttl_s - 5 < ended <= settings.job_ttl_s < pending
    assert not redis.exists(job_key(job_id, "image"))  # only results live until the TTL


def test_redis_down_means_retry_later() -> None:
    server = RedisServer()
    url = server.start()
    Redis.from_url(url).hset(MODELS_KEY, MODEL.name, MODEL.model_dump_json())
    with TestClient(create_app(Settings(redis_url=url, model=MODEL.name)), base_url=BASE_URL) as c:
        server.stop()
        for response in (c.get(f"/jobs/{'0' * 32}"), c.post("/restore", **request())):
            assert response.status_code == 503 and response.headers["retry-after"] == "2"
            detail = response.json()["detail"]
            assert detail == "the job store is unavailable; retry later"  # no address, no error
        ready = c.get("/readyz")
        assert ready.status_code == 503 and not ready.json()["redis"]
        assert c.get("/healthz").status_code == 200


def test_an_out_of_range_last_event_id_is_refused(client: TestClient) -> None:
    job_id = client.post("/restore", **request()).json()["id"]
    response = client.get(
        f"/jobs/{job_id}/events", headers={"Last-Event-ID": "18446744073709551616-0"}
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith("Last-Event-ID: not an event id")


# ---- hostile and careless uploads: a 4xx for each, nothing stored -----------------------


def chunk(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return struct.pack(">I", size) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with(*extra: bytes) -> bytes:
    """An 8 x 8 PNG (a real one's IHDR and IDAT) with `extra` chunks before its IDAT."""
    idat = Y8.index(b"IDAT") - 4
    return Y8[:idat] + b"".join(extra) + Y8[idat:]


def tiff_with_fractional_width() -> bytes:
    """A TIFF whose ImageWidth is a RATIONAL (type 5) 1/3: Pillow fails on it in odd ways."""
    entries = [(256, 5, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    ifd = struct.pack("<H", len(entries))
    rational_at = 8 + 2 + 12 * len(entries) + 4
    for tag, kind, count, value in entries:
        value = rational_at if kind == 5 else value
        ifd += struct.pack("<HHII", tag, kind, count, value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + struct.pack("<II", 1, 3)


def hostile_files() -> Iterator[tuple[str, bytes]]:
    """At least 400 files no client should be able to get a 5xx with."""
    rng = random.Random(0)
    sources = {
        "png": png(crop(32)),
        "jpeg": png(crop(32), "JPEG", quality=90),
        "webp": png(crop(32), "WEBP"),
    }
    for name, source in sources.items():
        for cut in sorted(rng.sample(range(1, len(source)), min(70, len(source) - 1))):
            yield f"{name} truncated at {cut}", source[:cut]
        for k in range(70):
            flipped = bytearray(source)
            for _ in range(1 + k % 4):
                flipped[rng.randrange(8, len(source))] = rng.randrange(256)
            yield f"{name} corrupted #{k}", bytes(flipped)
    bomb = zlib.compress(b"\0" * 50_000_000)
    yield "zTXt decompressing past the limit", png_with(chunk(b"zTXt", b"k\0\0" + bomb))
    yield "iCCP decompressing past the limit", png_with(chunk(b"iCCP", b"p\0\0" + bomb))
    for length in (0, 3, 2**31 - 1, 2**32 - 1):
        yield f"tEXt claiming {length} bytes", png_with(chunk(b"tEXt", b"key\0value", length))
        yield f"IHDR claiming {length} bytes", Y8[:8] + struct.pack(">I", length) + Y8[12:]
    yield "tiff with a fractional width", tiff_with_fractional_width()
    yield "random bytes", bytes(rng.randrange(256) for _ in range(2000))
    yield "a PNG signature alone", b"\x89PNG\r\n\x1a\n"
    yield "16-bit RGB PNG", _sixteen_bit_rgb()


def _sixteen_bit_rgb() -> bytes:
    """A 48-bit RGB PNG (Pillow opens it as 8-bit RGB, silently dropping the low bytes)."""
    rows = b"".join(b"\0" + bytes(range(48)) for _ in range(8))  # 8 x 8 pixels, 6 bytes each
    ihdr = struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0)
    return Y8[:8] + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_hostile_uploads_get_a_4xx_and_leave_nothing(client: TestClient, redis: Redis) -> None:
    files = list(hostile_files())
    assert len(files) >= 400
    statuses = {}
    for name, upload in files:
        response = client.post("/restore", **request(image=upload))
        statuses[name] = response.status_code
        assert response.status_code < 500, (name, response.text)
        if response.status_code != 202:
            detail = response.json()["detail"]
            assert detail.startswith("image: ") and "Error" not in detail, (name, detail)
    refused = [n for n, s in statuses.items() if s != 202]
    assert all(statuses[n] in (413, 422) for n in refused)
    assert statuses["16-bit RGB PNG"] == 422 and statuses["tiff with a fractional width"] == 422
    assert statuses["zTXt decompressing past the limit"] in (413, 422)
    records = [k for k in job_keys(redis) if k.count(b":") == 2]  # ddnm:job:<id>, one per job
    assert len(records) == len(files) - len(refused)  # corruptions that still decode
    assert len(refused) >= 300, len(refused)


def test_trailing_bytes_are_not_kept(client: TestClient, redis: Redis) -> None:
    """An 8 x 8 PNG followed by 200 kB of anything: admitted, and what is stored is the
    re-encoded pixels (a few hundred bytes), the same pixels."""
    padded = Y8 + bytes(200_000)
    response = client.post("/restore", **request(SR4, padded))
    assert response.status_code == 202, response.text
    job = response.json()
    stored = redis.get(job_key(job["id"], "image"))
    assert stored is not None and len(stored) < 1000
    same = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"))
    assert np.array_equal(same, np.asarray(Image.open(io.BytesIO(Y8)).convert("RGB")))


@pytest.mark.parametrize(
    ("field", "value"), [("steps", True), ("steps", "10"), ("steps", 10.5), ("clip_x0", 1)]
)
def test_spec_types_are_strict(client: TestClient, field: str, value: object) -> None:
    response = client.post("/restore", **request({**SR4, field: value}))
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"spec: {field}:")


def test_the_docs_pages_load_nothing_from_the_network(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        sources = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assets = [s for s in sources if s.startswith("/docs-assets/")]
        assert assets and not [s for s in sources if "//" in s], sources  # all local
        for asset in assets:
            served = client.get(asset)
            assert served.status_code == 200 and len(served.content) > 1000, asset
        assert "url: '/openapi.json'" in html.text or 'spec-url="/openapi.json"' in html.text
    assert client.get("/openapi.json").json()["info"]["title"] == "ddnm-service"


def test_an_estimate_predicts_what_admission_records_and_stores_nothing(
    client: TestClient, redis: Redis
) -> None:
    y = box_downsample(data.astronaut()[:96, :128], 4).round().astype(np.uint8)  # 24 x 32
    estimate = client.post("/restore/estimate", **request(SR4, png(y)))
    assert estimate.status_code == 200, estimate.text
    body = estimate.json()
    assert (body["width"], body["height"]) == (128, 96) and body["plan"]["windows"] > 1
    assert body["budget"] == Settings().max_network_evaluations
    assert job_keys(redis) == [] and redis.llen(queue_name(MODEL.name)) == 0
    job = client.post("/restore", **request(SR4, png(y))).json()
    assert (job["plan"], job["predicted_evaluations"]) == (
        body["plan"],
        body["predicted_evaluations"],
    )
    bad = client.post("/restore/estimate", **request(SR4, b"not an image"))
    assert bad.status_code == 422 and bad.json()["detail"].startswith("image: ")
