"""Continuous batching in one worker: throughput and latency of concurrent jobs, with and without.

One worker process (`python -m worker`, the embedded stack's Redis and API), started once per
configuration, in one run:
    batched       DDNM_WORKER_SLOTS=8, DDNM_BATCH_MAX_SAMPLES=8: the 8 held jobs share forwards
    unbatched     DDNM_WORKER_SLOTS=8, DDNM_BATCH_MAX_SAMPLES=1: 8 held jobs, one sample per forward
    one by one    DDNM_WORKER_SLOTS=1: one job at a time, as before the scheduler
Burst: 8 jobs submitted at once (default model, 8 x 8 photo crops -> 32 x 32, 4x SR, 50 steps),
wall time until all have succeeded. Mixed arrivals: 16 jobs submitted at random (exponential)
gaps, p50 / p99 of each job's time from admission to its end. Beside them, the hardware's limit:
one network forward at batch 8 against 8 at batch 1, per image, in this process.

    PYTHONPATH=. .venv/bin/python bench/worker_batching.py [--steps 50] [--mixed 16]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import skimage.data
import torch
from PIL import Image

from cli.embedded import Stack, free_port
from pipeline.models import load_named

CONFIGS = {
    "batched": {"DDNM_WORKER_SLOTS": "8", "DDNM_BATCH_MAX_SAMPLES": "8"},
    "unbatched": {"DDNM_WORKER_SLOTS": "8", "DDNM_BATCH_MAX_SAMPLES": "1"},
    "one by one": {"DDNM_WORKER_SLOTS": "1", "DDNM_BATCH_MAX_SAMPLES": "1"},
}


def uploads(n: int) -> list[bytes]:
    """n different 8 x 8 photo crops (PNG): the observations of 4x SR to 32 x 32."""
    photo = Image.fromarray(skimage.data.astronaut()).reduce(16)  # 32 x 32
    big = np.asarray(Image.fromarray(skimage.data.coffee()).reduce(4))
    crops = [np.asarray(photo)] + [big[8 * k : 8 * k + 32, 4 * k : 4 * k + 32] for k in range(n)]
    out = []
    for crop in crops[:n]:
        buffer = io.BytesIO()
        Image.fromarray(crop).reduce(4).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def submit(client: httpx.Client, image: bytes, steps: int, seed: int) -> str:
    spec = json.dumps(
        {"degradations": [{"op": "downsample", "factor": 4}], "steps": steps, "seed": seed}
    )
    response = client.post("/restore", files={"image": ("y.png", image), "spec": (None, spec)})
    response.raise_for_status()
    return str(response.json()["id"])


def wait_all(client: httpx.Client, ids: list[str]) -> list[dict]:
    done: dict[str, dict] = {}
    while len(done) < len(ids):
        for job_id in ids:
            if job_id not in done:
                job = client.get(f"/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    assert job["status"] == "succeeded", job["error"]
                    done[job_id] = job
        time.sleep(0.05)
    return [done[i] for i in ids]


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def burst(client: httpx.Client, images: list[bytes], steps: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(len(images)) as pool:
        ids = list(pool.map(lambda k: submit(client, images[k], steps, k), range(len(images))))
    wait_all(client, ids)
    return time.perf_counter() - started


def mixed(
    client: httpx.Client, images: list[bytes], steps: int, n: int, gap_s: float
) -> list[float]:
    """Latency (admission to end) of n jobs submitted at exponential gaps of mean gap_s."""
    rng, ids, lock = random.Random(0), [], threading.Lock()
    threads = []
    for k in range(n):

        def send(k: int = k) -> None:
            job_id = submit(client, images[k % len(images)], steps, k)
            with lock:
                ids.append(job_id)

        threads.append(threading.Thread(target=send))
        threads[-1].start()
        time.sleep(rng.expovariate(1 / gap_s))
    for thread in threads:
        thread.join()
    jobs = wait_all(client, ids)
    return sorted(seconds(j["finished_at"]) - seconds(j["created_at"]) for j in jobs)


def network_gain(batch: int, repeats: int = 20) -> float:
    """Per-image speed of one forward at `batch` over `batch` forwards at 1 (the limit)."""
    eps = load_named("ddnm-small-32", None).eps
    t = torch.full((batch,), 500.0)
    x = torch.randn(batch, 3, 32, 32)

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    with torch.no_grad():
        one = timed(lambda: [eps(x[k : k + 1], t[:1]) for k in range(batch)])
        all_at_once = timed(lambda: eps(x, t))
    return one / all_at_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--mixed", type=int, default=16)
    args = parser.parse_args()
    images = uploads(args.jobs)
    results: dict[str, dict[str, object]] = {}
    for name, env in CONFIGS.items():
        env = {**env, "DDNM_RATE_LIMIT_PER_MINUTE": "100000", "DDNM_LOG_FORMAT": "json"}
        with (
            tempfile.TemporaryDirectory() as logs,
            Stack(port=free_port(), workers=1, env=env, log_dir=Path(logs)) as stack,
            httpx.Client(base_url=stack.url, timeout=60) as client,
        ):
            burst(client, images[:2], args.steps)  # warm-up
            wall = burst(client, images, args.steps)
            solo = burst(client, images[:1], args.steps)
            latency = mixed(client, images, args.steps, args.mixed, gap_s=solo / 2)
        results[name] = {"wall": wall, "solo": solo, "latency": latency}
        print(f"{name}: {wall:.2f} s for {args.jobs} jobs ({solo:.2f} s alone)", flush=True)
    gain = network_gain(args.jobs)
    base = results["unbatched"]["wall"]
    print(
        f"\n{args.jobs} concurrent jobs, ddnm-small-32, 8x8 -> 32x32 4x SR, {args.steps} steps, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}\n"
    )
    print("| worker | 8 jobs (s) | images/s | vs unbatched | mixed p50 (s) | mixed p99 (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        lat = r["latency"]
        assert isinstance(lat, list)
        wall = float(r["wall"])  # type: ignore[arg-type]
        print(
            f"| {name} | {wall:.2f} | {args.jobs / wall:.2f} | {float(base) / wall:.2f} | "  # type: ignore[arg-type]
            f"{np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} |"
        )
    speedup = float(base) / float(results["batched"]["wall"])  # type: ignore[arg-type]
    print(
        f"\nnetwork alone, batch {args.jobs} vs {args.jobs} x batch 1, per image: {gain:.2f}x "
        f"(the limit); batching reached {speedup:.2f}x = {100 * speedup / gain:.0f} % of it"
    )


if __name__ == "__main__":
    main()
