"""bench/gpu.py, the GPU throughput bench, runs as written: here on the CPU with its --smoke size
(the default model, 2 steps), so that a machine with a GPU runs code that has run."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_the_gpu_bench_runs_and_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke", "--device", "cpu"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"dense bf16 matmul ceiling: [\d.]+ TFLOP/s", done.stdout)
    rows = re.findall(
        r"^\| off \| (\d+) \| ([\d.]+) \| [\d.e+-]+ \| (\d+) % \|$", done.stdout, re.M
    )
    assert [int(batch) for batch, _, _ in rows] == [1, 2]
    assert all(float(rate) > 0 for _, rate, _ in rows)
