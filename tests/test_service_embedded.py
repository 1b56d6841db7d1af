"""`ddnm serve`: one command starts redis-server, a worker and the API; Ctrl-C stops all three.
Started as the README says, `./dev serve` (which execs the `ddnm` of the project's .venv)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cli.embedded import REPO, RedisServer, Stack, free_port, port_open
from contract.settings import DEFAULT_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def children(pid: int) -> set[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_ddnm_serve_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDNM_")}
    env["OMP_NUM_THREADS"] = "1"
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        ["./dev", "serve", "--port", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["ready"] and ready["workers"][0]["model"] == DEFAULT_MODEL
        spawned = children(serve.pid)
        assert len(spawned) == 3  # redis-server, worker, uvicorn
        serve.send_signal(signal.SIGINT)
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
        log.close()
    assert not [pid for pid in spawned if alive(pid)]
    assert not port_open(port)
    assert "stopped" in (tmp_path / "serve.log").read_text()


def test_the_stack_notices_when_redis_dies() -> None:
    stack = Stack()
    stack.redis = RedisServer()
    stack.redis.start()
    try:
        stack.check_alive()
        assert stack.redis.process is not None
        stack.redis.process.kill()
        stack.redis.process.wait()
        with pytest.raises(RuntimeError, match="redis-server exited"):
            stack.check_alive()  # what `ddnm serve` calls twice a second
    finally:
        stack.stop()
