"""The API alone under load: `POST /restore` and `GET /jobs/{id}` from 50 concurrent clients on
loopback, workers paused (none consumes; a model is announced so admission runs in full), with
DDNM_API_WORKERS = 1 and more, in one run. Per configuration: requests/s, p50 / p99 latency, and
the API processes' CPU seconds per request (from /proc, children included).

    PYTHONPATH=. .venv/bin/python bench/api.py [--seconds 10] [--clients 50] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import skimage.data
from PIL import Image
from redis import Redis

from cli.embedded import REPO, RedisServer, free_port, port_open, wait_for
from contract.jobs import MODELS_KEY, ModelInfo

MODEL = ModelInfo(name="ddnm-small-32", checkpoint_sha256="0" * 64, image_size=32)
SPEC = json.dumps({"degradations": [{"op": "downsample", "factor": 4}], "steps": 50})


def upload() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(Image.fromarray(skimage.data.astronaut()).reduce(64))).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its children (the API's worker processes), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in [pid, *children(pid)]:
        fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def raw_request(port: int, method: str, path: str, files: dict | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request (built once: the load generator only resends them)."""
    built = httpx.Request(method, f"http://127.0.0.1:{port}{path}", files=files)
    body = built.read()
    headers = "".join(f"{k}: {v}\r\n" for k, v in built.headers.items())
    return f"{method} {path} HTTP/1.1\r\n{headers}\r\n".encode() + body


async def load(port: int, clients: int, seconds: float, request: bytes) -> list[float]:
    """Latencies of `request`, resent on keep-alive connections by `clients` loops for
    `seconds` (raw sockets: the generator costs little CPU beside the API's)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            assert status in (200, 202), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
        writer.close()

    await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies


def measure(workers: int, clients: int, seconds: float, image: bytes) -> dict[str, float]:
    with RedisServer() as redis_url:
        Redis.from_url(redis_url).hset(MODELS_KEY, MODEL.name, MODEL.model_dump_json())
        port = free_port()
        env = dict(os.environ) | {
            "DDNM_REDIS_URL": redis_url, "DDNM_PORT": str(port), "DDNM_API_WORKERS": str(workers),
            "DDNM_RATE_LIMIT_PER_MINUTE": "10000000", "DDNM_MAX_ACTIVE_JOBS_PER_KEY": "10000000",
            "DDNM_MAX_QUEUED_JOBS": "10000000", "DDNM_LOG_FORMAT": "json",
        }  # fmt: skip
        api = subprocess.Popen(
            [sys.executable, "-m", "service"], env=env, cwd=REPO, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(lambda: port_open(port), "the API", 30)
            time.sleep(1.0 * workers)  # every process up
            files = {"image": ("y.png", image), "spec": (None, SPEC)}
            job = httpx.post(f"http://127.0.0.1:{port}/restore", files=files).json()["id"]
            results = {}
            for name, request in (
                ("POST", raw_request(port, "POST", "/restore", files)),
                ("GET", raw_request(port, "GET", f"/jobs/{job}")),
            ):
                cpu = cpu_seconds(api.pid)
                start = time.perf_counter()
                latencies = asyncio.run(load(port, clients, seconds, request))
                wall = time.perf_counter() - start
                used = cpu_seconds(api.pid) - cpu
                results[f"{name} req/s"] = len(latencies) / wall
                results[f"{name} p50"] = float(np.percentile(latencies, 50))
                results[f"{name} p99"] = float(np.percentile(latencies, 99))
                results[f"{name} cpu ms"] = 1000 * used / len(latencies)
            return results
        finally:
            api.terminate()
            api.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    image = upload()
    print(f"{args.clients} clients, {args.seconds:.0f} s per measurement, {os.cpu_count()} cores "
          "(the load generator shares them)\n")  # fmt: skip
    print("| API processes | POST req/s | POST p50 / p99 (ms) | POST CPU/req (ms) | GET req/s | "
          "GET p50 / p99 (ms) | GET CPU/req (ms) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        r = measure(workers, args.clients, args.seconds, image)
        print(
            f"| {workers} | {r['POST req/s']:.0f} | {1000 * r['POST p50']:.0f} / "
            f"{1000 * r['POST p99']:.0f} | {r['POST cpu ms']:.1f} | {r['GET req/s']:.0f} | "
            f"{1000 * r['GET p50']:.0f} / {1000 * r['GET p99']:.0f} | {r['GET cpu ms']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
