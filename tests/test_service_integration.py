"""The service end to end with real parts: a private redis-server, two Celery worker processes
(`python -m worker`) and uvicorn on a loopback port, driven over HTTP with httpx. The model is the
small reference network (32x32); jobs use few steps. Redis keeps an append-only file, as in
production, so that it can be restarted mid-job. The last tests kill and stop workers."""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from httpx import Client
from PIL import Image
from redis import Redis
from skimage import data

from cli.embedded import REPO, Stack, free_port, stop_processes, wait_for
from contract.jobs import JOBS_COUNTER_KEY, job_key, queue_name
from contract.spec import TaskSpec
from ddnm import imaging
from pipeline.tasks import chain_operator
from tests.conftest import FIXTURE_MODEL_ENV
from tests.test_service_api import (
    BAD_INPUTS,
    LIMITS_ENV,
    MASK,
    box_downsample,
    crop,
    metric,
    parse_events,
    png,
    request,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = FIXTURE_MODEL_ENV["DDNM_MODEL"]
FIXTURE_SHA256 = "2e9c11d132c0563073ce28e12ee7db12025e954aea285e7fffb0384f7c40e4c3"
SLOTS = 2  # jobs each worker holds
ENV = {
    **FIXTURE_MODEL_ENV,
    **LIMITS_ENV,
    "DDNM_PROGRESS_INTERVAL_S": "0",  # every step, to watch progress advance
    "DDNM_PREVIEW_INTERVAL_S": "0",  # no previews: the event sequences below are exact
    "DDNM_JOB_TIME_LIMIT_S": "90",  # the README example (100 steps, tiled) takes 20 s here
    "DDNM_VISIBILITY_TIMEOUT_S": "120",
    "DDNM_REDELIVERY_CHECK_S": "1",
    "DDNM_HEARTBEAT_S": "1",
    "OMP_NUM_THREADS": "1",
    "DDNM_WORKER_SLOTS": str(SLOTS),
}
TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("service-logs")
    with Stack(port=free_port(), workers=2, env=ENV, log_dir=logs, redis_appendonly=True) as s:
        yield s


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with Client(base_url=stack.url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def redis(stack: Stack) -> Iterator[Redis]:
    r = Redis.from_url(stack.env["DDNM_REDIS_URL"])
    yield r
    r.close()


def submit(client: Client, spec: dict, image: bytes, mask: bytes | None = None) -> dict:
    response = client.post("/restore", **request(spec, image, mask))
    assert response.status_code == 202, response.text
    return response.json()


def wait(client: Client, job_id: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")


def wait_running(client: Client, job_id: str, min_step: int) -> dict:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["step"] >= min_step:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not reach step {min_step}")


def result_image(client: Client, job: dict) -> np.ndarray:
    response = client.get(job["result_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_photo_4x_super_resolution_end_to_end(client: Client) -> None:
    x = crop()
    y = box_downsample(x, 4).round().astype(np.uint8)
    spec = {
        "degradations": [{"op": "downsample", "factor": 4, "filter": "box"}],
        "steps": 20,
        "sigma_y": 0,  # noise-free DDNM: A x = y
    }
    job = submit(client, spec, png(y))
    assert job["status"] == "queued"
    with client.stream("GET", job["events_url"]) as stream:  # ends after the final status
        events = parse_events("".join(stream.iter_text()))
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    running_at = next(i for i, e in enumerate(events) if e["data"].get("status") == "running")
    steps = [e["data"]["step"] for e in events[running_at:-1]]
    assert all(e["event"] == "progress" for e in events[running_at + 1 : -1])
    assert steps[1:] == sorted(steps[1:]) and steps[-1] == 20 and len(set(steps)) > 5
    assert all(e["data"]["eta_s"] > 0 for e in events[running_at + 1 : -2])  # before step 20

    done = client.get(f"/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert done["progress"] == {"step": 20, "total": 20, "eta_s": 0.0}
    assert done["model"] == {"name": MODEL, "checkpoint_sha256": FIXTURE_SHA256}
    assert done["started_at"] >= done["created_at"] and done["finished_at"] > done["started_at"]
    assert done["consistency"] < 1e-4
    result = result_image(client, done)
    assert result.shape == (32, 32, 3)
    # A(result) = y up to rounding the result to 8 bits (half a level per pixel)
    assert np.abs(box_downsample(result, 4) - y).max() <= 0.5 + 0.02

    # resumed after the end: an ended job keeps its status events only (its progress is gone)
    resumed = client.get(job["events_url"], headers={"Last-Event-ID": events[4]["id"]})
    assert parse_events(resumed.text) == [e for e in events[5:] if e["event"] == "status"]


def degraded(spec: dict, x: np.ndarray, mask: np.ndarray | None) -> bytes:
    """The observation a chain makes of x, as the PNG a client would upload."""
    s = TaskSpec.model_validate({**spec, "seed": 0})
    known = None if mask is None else torch.from_numpy(mask >= 128).float()
    y = chain_operator(s, (3, *x.shape[:2]), known).A(imaging.to_tensor(x))
    u8 = ((y[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return png(u8[..., 0] if u8.shape[2] == 1 else u8)


OLD_PHOTO = [{"op": "inpaint"}, {"op": "grayscale"}, {"op": "downsample", "factor": 4}]
EVERY_OP = {
    "downsample bicubic": [{"op": "downsample", "factor": 2, "filter": "bicubic"}],
    "blur gaussian": [{"op": "blur", "kernel": "gaussian", "sigma": 1.0}],
    "blur uniform": [{"op": "blur", "kernel": "uniform", "size": 5}],
    "blur anisotropic": [
        {"op": "blur", "kernel": "anisotropic", "sigma_rows": 2.0, "sigma_cols": 0.5}
    ],
    "grayscale": [{"op": "grayscale"}],
    "inpaint": [{"op": "inpaint"}],
    "old photo": OLD_PHOTO,
    "blur then downsample": [{"op": "blur"}, {"op": "downsample", "factor": 2}],
}
EVALUATE = {
    "cs walsh_hadamard": [{"op": "cs", "ratio": 0.25}],
    "cs block": [{"op": "cs", "ratio": 0.25, "kind": "block", "block_size": 8}],
    "downsample, noisy": [{"op": "downsample", "factor": 2}],
    "denoise": [{"op": "denoise"}],
}


def test_every_op_and_the_old_photo_chain(client: Client) -> None:
    x = crop()
    jobs = {}
    for name, chain in EVERY_OP.items():
        spec = {"degradations": chain, "steps": 5}
        mask = MASK if any(d["op"] == "inpaint" for d in chain) else None
        jobs[name] = submit(
            client, spec, degraded(spec, x, mask), None if mask is None else png(mask)
        )
    for name, chain in EVALUATE.items():
        sigma_y = 0.05 if name in ("downsample, noisy", "denoise") else 0.0
        spec = {"degradations": chain, "steps": 5, "evaluate": True, "sigma_y": sigma_y}
        jobs[name] = submit(client, spec, png(x))
    done = {name: wait(client, job["id"]) for name, job in jobs.items()}
    for name, job in done.items():
        assert job["status"] == "succeeded", (name, job["error"])
        assert result_image(client, job).shape == (32, 32, 3), name
        if job["spec"]["sigma_y"] == 0:
            # y quantized to 8 bits may lie a little outside what [0, 255] images can produce
            assert job["consistency"] < 5e-3, (name, job["consistency"])
    for name in EVALUATE:
        evaluation = done[name]["evaluation"]
        assert evaluation is not None and 0 < evaluation["psnr"] < 100, name
        assert -1 <= evaluation["ssim"] <= 1, name
    assert done["grayscale"]["evaluation"] is None
    # two workers consume the one queue
    assert len({job["worker"] for job in done.values()}) == 2


def photo(height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height)))


def holes(height: int, width: int) -> np.ndarray:
    """A mask with 40 % of the pixels unknown (black)."""
    rng = np.random.default_rng(height * width)
    return np.where(rng.random((height, width)) > 0.4, 255, 0).astype(np.uint8)


SR4 = [{"op": "downsample", "factor": 4}]
TILED = {  # name: (chain, tiling, restored height x width)
    "1-D 4x SR, 32x128 -> 128x512, fused": (SR4, "fused", (128, 512)),
    "1-D 4x SR, 32x128 -> 128x512, Mask-Shift": (SR4, "mask_shift", (128, 512)),
    "ragged 2x SR, 36x45 -> 72x90, Mask-Shift": (
        [{"op": "downsample", "factor": 2}],
        "mask_shift",
        (72, 90),
    ),
    "colorization 40x72, fused": ([{"op": "grayscale"}], "fused", (40, 72)),
    "inpainting 48x80, Mask-Shift": ([{"op": "inpaint"}], "mask_shift", (48, 80)),
    "old photo, 20x24 -> 80x96, fused": (OLD_PHOTO, "fused", (80, 96)),
}


def test_images_larger_than_the_model_are_tiled_end_to_end(client: Client) -> None:
    """Sizes other than the model's 32 x 32, through the API and the workers: the result has the
    restored size, and (noise-free) A x = y before 8-bit rounding."""
    jobs = {}
    for name, (chain, tiling, (height, width)) in TILED.items():
        spec = {"degradations": chain, "steps": 3, "tiling": tiling, "sigma_y": 0}
        x = photo(height, width)
        mask = holes(height, width) if any(d["op"] == "inpaint" for d in chain) else None
        jobs[name] = submit(
            client, spec, degraded(spec, x, mask), None if mask is None else png(mask)
        )
        assert (jobs[name]["height"], jobs[name]["width"]) == (height, width)
        assert jobs[name]["plan"]["window"] == 32, name
    for name, job in jobs.items():
        done = wait(client, job["id"], timeout_s=120)
        assert done["status"] == "succeeded", (name, done["error"])
        assert result_image(client, done).shape == (*TILED[name][2], 3), name
        assert done["consistency"] <= 1e-5, (name, done["consistency"])


def test_the_readme_curl_example_runs_as_written(stack: Stack, tmp_path: Path) -> None:
    """The README's curl commands, as written but for the address, in a folder where the
    README's paths (docs/examples) exist: the upload is admitted (202), the job can be read,
    its events stream to the end, the result is a PNG of the restored size (96 x 64)."""
    readme = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL) if "curl" in b)
    commands = [
        shlex.split(c.split("#")[0].replace("http://127.0.0.1:8000", stack.url))
        for c in block.replace("\\\n", " ").splitlines()
    ]
    (tmp_path / "docs").symlink_to(REPO / "docs")

    def curl(argv: list[str], job_id: str = "") -> str:
        argv = [a.replace("<id>", job_id) for a in argv]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (argv, done.stderr)
        return done.stdout

    admitted = curl(commands[0])
    assert admitted.startswith("HTTP/1.1 202"), admitted
    job_id = re.search(r"location: /jobs/(\w+)", admitted, re.IGNORECASE).group(1)  # type: ignore[union-attr]
    assert json.loads(curl(commands[1], job_id))["id"] == job_id
    assert '"status":"succeeded"' in curl(commands[2], job_id).replace(" ", "")
    curl(commands[3], job_id)
    assert Image.open(tmp_path / "runs" / "restored.png").size == (96, 64)
    curl(commands[4], job_id)


def test_cancel_a_running_job(client: Client) -> None:
    job = submit(client, {"degradations": [{"op": "grayscale"}], "steps": 200}, png(crop()[..., 0]))
    wait_running(client, job["id"], min_step=3)
    asked_at = time.time()
    response = client.delete(f"/jobs/{job['id']}")
    assert response.status_code == 202 and response.json()["cancel_requested"]
    step_when_asked = response.json()["progress"]["step"]  # read after the request was stored
    final = wait(client, job["id"])
    assert final["status"] == "canceled"
    stopped_at = final["progress"]["step"]
    # the sampler checks at every step: at most the step under way when asked is completed
    assert 3 <= stopped_at <= step_when_asked + 1 < 200
    finished = _epoch(final["finished_at"])
    seconds_per_step = (finished - _epoch(final["started_at"])) / stopped_at
    # and soon: well before the ~190 steps left would have run (slack for a loaded machine)
    assert finished - asked_at < 2 * seconds_per_step + 1.0, (finished - asked_at, seconds_per_step)
    assert client.get(f"/jobs/{job['id']}/result").status_code == 409
    events = parse_events(client.get(job["events_url"]).text)
    assert events[-1]["data"]["status"] == "canceled"


def test_a_queued_job_canceled_never_runs(client: Client, redis: Redis) -> None:
    long = {"degradations": [{"op": "grayscale"}], "steps": 400}
    busy = [submit(client, long, png(crop()[..., 0])) for _ in range(2 * SLOTS)]
    for job in busy:
        wait_running(client, job["id"], min_step=1)
    waiting = submit(client, {"degradations": [{"op": "grayscale"}], "steps": 5}, png(crop()))
    # prefetch 1 per slot: each worker holds only the jobs it runs, the next waits in the queue
    assert redis.llen(queue_name(MODEL)) == 1
    canceled = client.delete(f"/jobs/{waiting['id']}").json()
    assert canceled["status"] == "canceled" and canceled["finished_at"] is not None
    for job in busy:
        assert client.delete(f"/jobs/{job['id']}").json()["cancel_requested"]
    # a worker takes the canceled job's message and acknowledges it without running the job
    # (kombu keeps delivered, unacknowledged messages in the hash "unacked")
    deadline = time.monotonic() + 30.0
    while redis.llen(queue_name(MODEL)) or redis.hlen("unacked"):
        assert time.monotonic() < deadline, "the canceled job's message was not consumed"
        time.sleep(0.05)
    final = client.get(f"/jobs/{waiting['id']}").json()
    assert final == canceled
    assert (final["attempts"], final["started_at"], final["worker"]) == (0, None, None)
    statuses = [e["data"]["status"] for e in parse_events(client.get(final["events_url"]).text)]
    assert statuses == ["queued", "canceled"]
    assert [wait(client, job["id"])["status"] for job in busy] == ["canceled"] * 2 * SLOTS


def test_a_redis_restart_mid_job_loses_nothing(client: Client, stack: Stack) -> None:
    job = submit(client, {"degradations": [{"op": "grayscale"}], "steps": 60}, png(crop()))
    wait_running(client, job["id"], min_step=3)
    assert stack.redis is not None
    # down for a second: the worker's next progress write meets it (its commands are retried)
    stack.redis.restart(down_s=1.0)
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "running"
    final = wait(client, job["id"])
    # the same attempt ran on: a failed write would have left the job to the visibility timeout
    assert (final["status"], final["attempts"], final["progress"]["step"]) == ("succeeded", 1, 60)
    # the API and the workers reconnected: a new job runs
    after = submit(client, {"degradations": [{"op": "grayscale"}], "steps": 5}, png(crop()))
    assert wait(client, after["id"])["status"] == "succeeded"


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_bad_inputs_are_refused_and_nothing_enqueued(client: Client, redis: Redis) -> None:
    before = (len(list(redis.scan_iter(match=job_key("*")))), redis.hgetall(JOBS_COUNTER_KEY))
    for name, kwargs, status, message in BAD_INPUTS:
        if name == "unknown model":
            kwargs = request({"degradations": [{"op": "grayscale"}], "model": "nope"})
        response = client.post("/restore", **kwargs)
        assert response.status_code == status, (name, response.text)
        assert message.replace("test-model", MODEL) in response.json()["detail"], name
    after = (len(list(redis.scan_iter(match=job_key("*")))), redis.hgetall(JOBS_COUNTER_KEY))
    assert after == before
    assert redis.llen(queue_name(MODEL)) == 0


def test_readiness_models_and_metrics(client: Client) -> None:
    ready = client.get("/readyz").json()
    assert ready["ready"] and len(ready["workers"]) == 2
    assert client.get("/models").json()[0]["workers_ready"] == 2
    text = client.get("/metrics").text
    assert 'ddnm_jobs_total{status="succeeded"}' in text
    assert metric(text, "ddnm_step_seconds_count") > 20
    assert (
        metric(text, "ddnm_job_duration_seconds_count")
        >= metric(text, 'ddnm_jobs_total{status="succeeded"}')
        > 10
    )
    assert metric(text, f'ddnm_queue_depth{{model="{MODEL}"}}') == 0
    assert metric(text, f'ddnm_workers_ready{{model="{MODEL}"}}') == 2


def test_killing_a_worker_mid_job_does_not_lose_the_job(client: Client, stack: Stack) -> None:
    job = submit(client, {"degradations": [{"op": "grayscale"}], "steps": 60}, png(crop()[..., 0]))
    running = wait_running(client, job["id"], min_step=5)
    killed = running["worker"]
    pid = int(killed.rsplit("-", 1)[1])
    (name,) = [n for n in stack.workers if stack.processes[n].pid == pid]
    stack.kill(name)  # SIGKILL, mid-job: no acknowledgement, no status update
    final = wait(client, job["id"], timeout_s=90.0)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempts"] == 2 and final["worker"] != killed
    assert final["progress"]["step"] == 60
    # the survivor carries on
    assert [w["worker"] for w in client.get("/readyz").json()["workers"]] == [final["worker"]]


def test_stopping_a_worker_hands_every_job_it_holds_on_at_once(
    client: Client, stack: Stack, redis: Redis
) -> None:
    stack.add_worker()  # the last test killed one

    def two_ready() -> bool:
        return sum(w["ready"] for w in client.get("/readyz").json()["workers"]) == 2

    wait_for(two_ready, "a second worker with its model", 120.0)
    jobs = [
        submit(client, {"degradations": [{"op": "grayscale"}], "steps": 80}, png(crop()[..., 0]))
        for _ in range(2 * SLOTS)  # each worker holds SLOTS of them
    ]
    running = [wait_running(client, job["id"], min_step=3) for job in jobs]
    stopped = running[0]["worker"]
    held = [job for job in running if job["worker"] == stopped]
    assert len(held) == SLOTS
    pid = int(stopped.rsplit("-", 1)[1])
    (name,) = [n for n in stack.workers if stack.processes[n].pid == pid]
    process = stack.processes.pop(name)
    stopped_at = time.time()
    stop_processes([process])  # SIGTERM (docker stop): a warm shutdown
    assert process.returncode == 0  # it stopped by itself, at its jobs' next steps
    for job in held:
        final = wait(client, job["id"])
        assert final["status"] == "succeeded", final["error"]
        assert final["attempts"] == 2 and final["worker"] != stopped
        # handed back by the worker itself (the reaper would have sent a new message), at once
        assert _epoch(final["started_at"]) - stopped_at < 10.0
        assert redis.hget(job_key(job["id"]), "dispatch") == b"0"
        events = parse_events(client.get(job["events_url"]).text)
        statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
        assert statuses == ["queued", "running", "queued", "running", "succeeded"]
