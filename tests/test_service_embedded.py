"""`ddnm serve`: one command starts redis-server, a worker and the API; Ctrl-C stops all three.
Started as the README says, `./dev serve` (which execs the `ddnm` of the project's .venv)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

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


def start_serve(port: int, log_path: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """`./dev serve --port PORT` as the README says, its output in log_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDNM_")}
    env["OMP_NUM_THREADS"] = "1"
    log = log_path.open("wb")
    serve = subprocess.Popen(
        ["./dev", "serve", "--port", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return serve, log


def wait_ready(serve: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert serve.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(log_path.read_text())


def gone_within(pids: set[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_ddnm_serve_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    port, log_path = free_port(), tmp_path / "serve.log"
    serve, log = start_serve(port, log_path)
    try:
        wait_ready(serve, port, log_path)
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
    assert "stopped" in log_path.read_text()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_the_stack_dies_whole_however_ddnm_serve_ends(tmp_path: Path, sig: signal.Signals) -> None:
    """Killed outright (no handler runs) or its terminal closed: no process of the stack is
    left after 5 s, and the port is free again."""
    port, log_path = free_port(), tmp_path / "serve.log"
    serve, log = start_serve(port, log_path)
    try:
        wait_ready(serve, port, log_path)
        spawned = children(serve.pid)
        assert len(spawned) == 3
        serve.send_signal(sig)
        serve.wait(30)
        assert gone_within(spawned, 5.0), [pid for pid in spawned if alive(pid)]
    finally:
        if serve.poll() is None:
            serve.kill()
        log.close()
    assert not port_open(port)


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve, log = start_serve(port, tmp_path / "serve.log")
        try:
            assert serve.wait(60) == 1
        finally:
            log.close()
    printed = (tmp_path / "serve.log").read_text()
    assert f"port {port} on 127.0.0.1 is already in use" in printed
    assert "ddnm-service ready" not in printed


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
