"""Redis bytes a finished job keeps: its record, its event stream and its result (MEMORY USAGE),
for the default model's 4x SR of a 8 x 8 upload to 32 x 32, through the embedded stack.

    PYTHONPATH=. .venv/bin/python bench/redis_bytes.py [--jobs 5]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import skimage.data
from PIL import Image
from redis import Redis

from cli.embedded import Stack, free_port
from contract.jobs import job_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    args = parser.parse_args()
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(Image.fromarray(skimage.data.astronaut()).reduce(64))).save(
        buffer, format="PNG"
    )
    spec = json.dumps({"degradations": [{"op": "downsample", "factor": 4}], "steps": 50})
    rows = []
    with (
        tempfile.TemporaryDirectory() as logs,
        Stack(port=free_port(), workers=1, log_dir=Path(logs)) as stack,
        httpx.Client(base_url=stack.url, timeout=60) as client,
    ):
        redis = Redis.from_url(stack.env["DDNM_REDIS_URL"])
        for _ in range(args.jobs):
            files = {"image": ("y.png", buffer.getvalue()), "spec": (None, spec)}
            job_id = client.post("/restore", files=files).json()["id"]
            while client.get(f"/jobs/{job_id}").json()["status"] != "succeeded":
                time.sleep(0.1)
            usage = {
                p: redis.memory_usage(job_key(job_id, p)) or 0 for p in ("", "events", "result")
            }
            png = len(redis.get(job_key(job_id, "result")) or b"")
            rows.append((sum(usage.values()), png, usage))
        leftovers = [k.decode() for k in redis.keys("ddnm:job:*") if k.count(b":") > 3]
    total, png, usage = rows[-1]
    median = statistics.median(r[0] for r in rows)
    print(
        f"per finished job (median of {args.jobs}): {median} B in Redis for a {png} B result "
        f"PNG: record {usage['']} B, events {usage['events']} B, result {usage['result']} B; "
        f"over the PNG: {total - png} B; other job keys: {leftovers}"
    )


if __name__ == "__main__":
    main()
