"""The two images built and run for real on a Docker engine: FROM a Debian 12 base made with
debootstrap (docker/debian-base.sh; no image registry needed), the API image serves a job that a
worker on the host runs, then the worker image runs one for it. Redis is a redis-server on the
host; the containers share the host's network.

Needs a Docker engine and root (debootstrap); .ci/run starts Debian's dockerd and sets
DDNM_REQUIRE_TOOLS, so that there a missing engine fails instead of skipping. The worker image
takes torch 2.13.0 from DDNM_TORCH_WHEELS (default /opt/wheels) when a wheel is there, a CPU
build say, else PyPI's CUDA build (gigabytes)."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from cli.embedded import REPO, RedisServer, free_port, stop_processes, wait_for
from tests.test_service_api import box_downsample, crop, png
from tests.test_service_integration import result_image, submit, wait, wait_running

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.images,
    pytest.mark.timeout(1800),  # the worker image takes minutes to build
]

BASE = "ddnm-debian-base:bookworm"
API_IMAGE, WORKER_IMAGE = "ddnm-api:ci", "ddnm-worker:ci"
KEY = "images-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
RUN = f"ddnm-images-test-{os.getpid()}"  # names of this run's containers
QUIET: dict = {"capture_output": True, "text": True, "check": False}


def docker(*args: str, timeout_s: float = 120) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr[-3000:]}"
    return done.stdout.strip()


def engine_up() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    if not engine_up():
        if os.environ.get("DDNM_REQUIRE_TOOLS"):
            pytest.fail("no Docker engine answers `docker info`")
        pytest.skip("no Docker engine (.ci/run starts one)")


def build(dockerfile: str, tag: str, *build_args: str) -> float:
    """Build an image FROM the Debian base; its build time in seconds."""
    started = time.monotonic()
    before = subprocess.run(["docker", "image", "inspect", "--format={{.Id}}", tag], **QUIET)
    args = [f"--build-arg={a}" for a in (f"BASE_IMAGE={BASE}", *build_args)]
    docker("build", "--network=host", "-f", dockerfile, "-t", tag, *args, ".", timeout_s=1500)
    if before.returncode == 0 and before.stdout.strip() != docker(
        "image", "inspect", "--format={{.Id}}", tag
    ):
        subprocess.run(["docker", "image", "rm", before.stdout.strip()], **QUIET)  # the last run's
    return time.monotonic() - started


@pytest.fixture(scope="module")
def base() -> None:
    started = time.monotonic()
    subprocess.run(["bash", str(REPO / "docker/debian-base.sh"), BASE], check=True, timeout=900)
    print(f"\nimages: base {BASE} ready in {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="module")
def api_image(base: None) -> str:
    print(f"\nimages: API image built in {build('docker/api.Dockerfile', API_IMAGE):.0f} s")
    return API_IMAGE


@functools.cache
def wheel_server() -> str:
    """find-links URL of the local torch wheels ("" when there are none), served over HTTP."""
    folder = Path(os.environ.get("DDNM_TORCH_WHEELS", "/opt/wheels"))
    if not list(folder.glob("torch-2.13.0*.whl")):
        return ""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="module")
def worker_image(base: None) -> str:
    seconds = build("docker/worker.Dockerfile", WORKER_IMAGE, f"PIP_FIND_LINKS={wheel_server()}")
    print(f"\nimages: worker image built in {seconds:.0f} s")
    return WORKER_IMAGE


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as url:
        yield url


def container(image: str, name: str, env: dict[str, str]) -> str:
    options = [f"--env={k}={v}" for k, v in env.items()]
    docker("run", "--detach", f"--name={RUN}-{name}", "--network=host", *options, image)
    return f"{RUN}-{name}"


@pytest.fixture(scope="module")
def api(api_image: str, redis_url: str) -> Iterator[str]:
    port = free_port()
    name = container(
        api_image,
        "api",
        {"DDNM_REDIS_URL": redis_url, "DDNM_PORT": str(port), "DDNM_API_KEYS": KEY},
    )
    yield f"http://127.0.0.1:{port}"
    docker("rm", "--force", name)


def health(name: str) -> str:
    return docker("inspect", "--format={{.State.Health.Status}}", name)


def ready_workers(url: str) -> list[dict]:
    try:
        response = httpx.get(f"{url}/readyz", headers=AUTH, timeout=2.0)
    except httpx.HTTPError:
        return []
    return [w for w in response.json()["workers"] or [] if w["ready"]]


def no_build_tools(image: str) -> bool:
    """No compiler or make in the image (its pip installs are wheels only)."""
    probe = "for tool in gcc cc c++ make ld; do command -v $tool; done; true"
    return docker("run", "--rm", "--entrypoint=sh", image, "-c", probe) == ""


def restore_one(url: str) -> dict:
    """A 4x super-resolution job of a real photo through the API; the ended job."""
    x = crop()
    y = box_downsample(x, 4).round().astype(np.uint8)
    spec = {"degradations": [{"op": "downsample", "factor": 4, "filter": "box"}], "steps": 20}
    with httpx.Client(base_url=url, headers=AUTH, timeout=30.0) as client:
        job = wait(client, submit(client, {**spec, "sigma_y": 0}, png(y))["id"], timeout_s=120)
        assert job["status"] == "succeeded", job
        result = result_image(client, job)
    assert result.shape == (32, 32, 3)
    assert np.abs(box_downsample(result, 4) - y).max() <= 0.5 + 0.02  # A x = y, 8-bit rounding
    return job


def test_the_api_image_serves_a_job_run_by_a_host_worker(api: str, redis_url: str) -> None:
    name = f"{RUN}-api"
    env = {**os.environ, "DDNM_REDIS_URL": redis_url, "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker"], env=env, cwd=REPO, start_new_session=True
    )
    try:
        wait_for(lambda: bool(ready_workers(api)), "/readyz with a ready worker", 120)
        job = restore_one(api)
        assert job["worker"].split("-")[-1] == str(worker.pid)  # the host's worker ran it
    finally:
        stop_processes([worker])
    assert docker("exec", name, "id", "-u") == "10001"
    no_torch = subprocess.run(["docker", "exec", name, "python", "-c", "import torch"], check=False)
    assert no_torch.returncode != 0  # the API image has no torch
    assert no_build_tools(API_IMAGE)
    wait_for(lambda: health(name) == "healthy", "the API container's HEALTHCHECK", 60)
    # bound to 0.0.0.0 in its container, it refuses to run without keys
    port = str(free_port())
    refused = subprocess.run(
        ["docker", "run", "--rm", "--network=host", f"--env=DDNM_PORT={port}", API_IMAGE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "DDNM_API_KEYS" in refused.stderr


def test_the_worker_image_runs_a_job(api: str, worker_image: str, redis_url: str) -> None:
    assert not ready_workers(api)  # the host's worker is gone
    name = container(worker_image, "worker", {"DDNM_REDIS_URL": redis_url, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(lambda: bool(ready_workers(api)), "the worker container's model", 180)
        job = restore_one(api)
        logs = subprocess.run(["docker", "logs", name], **QUIET).stderr
        # the container's worker ran it: its log shows the job, its id is process 1's
        assert f"'{job['id']}'" in logs and job["worker"].endswith("-1")
        assert docker("exec", name, "id", "-u") == "10001"
        assert no_build_tools(WORKER_IMAGE)
        pull = docker("exec", name, "ddnm", "models", "path", "ddnm-small-32")
        assert pull.endswith(".safetensors")
        wait_for(lambda: health(name) == "healthy", "the worker container's HEALTHCHECK", 60)
        # SIGTERM mid-job (docker stop, a pod's end): the job goes back to the queue and the
        # worker exits, well within the grace period the manifests and compose give it
        with httpx.Client(base_url=api, headers=AUTH, timeout=30.0) as client:
            long = {"degradations": [{"op": "grayscale"}], "steps": 1000}
            held = wait_running(client, submit(client, long, png(crop()[..., 0]))["id"], 3)
            started = time.monotonic()
            docker("stop", "--time=60", name, timeout_s=90)
            stopped_s = time.monotonic() - started
            back = client.get(f"/jobs/{held['id']}").json()
            client.delete(f"/jobs/{held['id']}")
        assert back["status"] == "queued" and back["progress"]["step"] < 1000, back
        assert docker("inspect", "--format={{.State.ExitCode}}", name) == "0"
        print(f"\nimages: worker container stopped mid-job in {stopped_s:.1f} s, job handed back")
        assert stopped_s < 30
    finally:
        docker("rm", "--force", name)
