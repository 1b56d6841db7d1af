"""`python -m service` (service/server.py) and the JSON logs (contract/logs.py).

The integration tests start the real server (and a private Redis) with header and body timeouts of
1 s and talk to it over raw sockets, as a slow or broken client would; the unit tests drive the
log formatter and the `BodyTimeout` middleware directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.logs import JsonFormatter, configure_logging, uvicorn_log_config
from contract.settings import Settings
from service.server import BodyTimeout, HeaderTimeoutProtocol, open_public_problem, uvicorn_config
from tests.conftest import REPO

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MARGIN_S = 3.0  # on top of a timeout, before a test calls the server too slow
TRICKLE_S = 0.1  # between two bytes of a slow client
ISO_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


# --- the server, in a process ---------------------------------------------------------------


@dataclass
class Api:
    port: int
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        return [line for line in self.stderr.read_text().splitlines() if line.strip()]


def server_env(**settings: str) -> dict[str, str]:
    """This environment less any DDNM_* variable, plus `settings` (DDNM_ names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDNM_")}
    return env | settings


def wait_until_up(process: subprocess.Popen[bytes], api: Api, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}):\n{api.stderr.read_text()}")
        try:
            if httpx.get(f"{api.url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the server did not come up:\n{api.stderr.read_text()}")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`python -m service` on a free port with 1 s timeouts, its stderr in a file."""
    from cli.embedded import RedisServer, free_port

    with RedisServer() as redis_url:
        result = Api(free_port(), tmp_path_factory.mktemp("api") / "stderr.log")
        env = server_env(
            DDNM_REDIS_URL=redis_url,
            DDNM_PORT=str(result.port),
            DDNM_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
            DDNM_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
            DDNM_LOG_FORMAT="json",
        )
        with result.stderr.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=REPO, env=env, stderr=stderr
            )
        try:
            wait_until_up(process, result)
            yield result
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def trickle(sock: socket.socket, seconds: float) -> bool:
    """Send a header byte every TRICKLE_S for `seconds`; whether the server closed meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"a")
            readable, _, _ = select.select([sock], [], [], TRICKLE_S)
            if readable and sock.recv(1024) == b"":
                return True
        except OSError:  # reset, broken pipe: closed too
            return True
    return False


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, leaving the connection open."""
    sock.settimeout(5.0)
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
    while len(body) < length:
        body += sock.recv(65536)
    return head


@pytest.mark.integration
def test_slow_headers_are_cut_off_while_other_clients_are_served(api: Api) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", api.port)) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert not trickle(slow, 0.3)
        assert httpx.get(f"{api.url}/healthz", timeout=5.0).status_code == 200
        assert trickle(slow, HEADER_TIMEOUT_S + MARGIN_S), "the slow client was not disconnected"
    assert time.monotonic() - started < HEADER_TIMEOUT_S + MARGIN_S


@pytest.mark.integration
def test_the_header_timeout_restarts_after_a_response_on_keep_alive(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.port)) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(client).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        # the keep-alive timeout (5 s) stops at the first byte: only the header timeout is left
        assert trickle(client, HEADER_TIMEOUT_S + MARGIN_S)
    assert time.monotonic() - started < HEADER_TIMEOUT_S + MARGIN_S


@pytest.mark.integration
def test_a_body_shorter_than_its_content_length_gets_408(api: Api) -> None:
    head = (
        b"POST /restore HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 1000\r\n\r\n"
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", api.port)) as client:
        client.sendall(head + b"--xyz\r\nCon")  # 10 of the 1000 bytes
        response = read_until_closed(client, BODY_TIMEOUT_S + MARGIN_S)
    assert time.monotonic() - started < BODY_TIMEOUT_S + MARGIN_S
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), response
    detail = json.loads(rest.partition(b"\r\n\r\n")[2])["detail"]
    assert detail == "request body not received within 1 s; send the whole body"


@pytest.mark.integration
def test_an_open_api_on_a_public_address_refuses_to_start() -> None:
    from cli.embedded import free_port

    env = server_env(DDNM_HOST="0.0.0.0", DDNM_PORT=str(free_port()), DDNM_LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    lines = [json.loads(line) for line in done.stderr.decode().splitlines() if line.strip()]
    errors = [line["message"] for line in lines if line["level"] == "ERROR"]
    assert len(errors) == 1 and "DDNM_API_KEYS" in errors[0], lines
    assert "DDNM_HOST=0.0.0.0" in errors[0]
    assert not any("Uvicorn running" in line["message"] for line in lines)  # never bound


@pytest.mark.integration
def test_the_server_logs_json_lines(api: Api) -> None:
    assert httpx.get(f"{api.url}/healthz", timeout=5.0).status_code == 200
    deadline = time.monotonic() + 5.0
    while not any("GET /healthz" in line for line in api.log_lines()):
        assert time.monotonic() < deadline, "no access line for GET /healthz"
        time.sleep(0.05)
    entries = [json.loads(line) for line in api.log_lines()]  # each line a JSON object
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= entry.keys(), entry
        assert ISO_MS_UTC.match(entry["ts"]), entry
    loggers = {entry["logger"] for entry in entries}
    assert {"uvicorn.error", "uvicorn.access", "service.server"} <= loggers, loggers
    warning = next(e for e in entries if e["logger"] == "service.server")
    assert warning["level"] == "WARNING" and "without keys" in warning["message"]


# --- the JSON formatter and the logging setup -------------------------------------------------


def formatted(record_call: str = "info", **kwargs: object) -> dict:
    """The JSON line of one log call on a logger of its own, parsed."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    logger = logging.getLogger("tests.server.formatter")
    handler = Collect()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        getattr(logger, record_call)("job %s: %d steps", "abc", 3, **kwargs)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    assert len(lines) == 1 and "\n" not in lines[0]
    return json.loads(lines[0])


def test_a_json_line_has_the_standard_fields() -> None:
    entry = formatted()
    assert entry.keys() == {"ts", "level", "logger", "message"}
    assert ISO_MS_UTC.match(entry["ts"])
    assert entry["level"] == "INFO"
    assert entry["logger"] == "tests.server.formatter"
    assert entry["message"] == "job abc: 3 steps"


def test_a_json_line_has_the_extra_fields() -> None:
    entry = formatted(extra={"job_id": "j-1", "attempt": 2, "path": Path("/x"), "level": "no"})
    assert entry["job_id"] == "j-1" and entry["attempt"] == 2
    assert entry["path"] == "/x"  # not JSON: as str
    assert entry["level"] == "INFO"  # an extra does not replace a standard field


def test_a_json_line_has_the_traceback_of_a_logged_exception() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        entry = formatted("exception")
    assert entry["level"] == "ERROR"
    assert entry["exc"].startswith("Traceback") and "ZeroDivisionError" in entry["exc"]
    assert "exc" not in formatted()


@pytest.fixture
def saved_loggers() -> Iterator[None]:
    """Give back the root and uvicorn loggers as they were."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in UVICORN_LOGGERS)]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    logging.captureWarnings(False)


def test_configure_logging_writes_json_or_text_to_stderr(
    saved_loggers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json")
    logging.getLogger("tests.server").info("hello %s", "json", extra={"job_id": "j-2"})
    entry = json.loads(capsys.readouterr().err)
    assert entry["message"] == "hello json" and entry["job_id"] == "j-2"
    configure_logging("text", level=logging.WARNING)
    logging.getLogger("tests.server").info("not shown")
    logging.getLogger("tests.server").warning("hello text")
    assert re.fullmatch(r".+ tests\.server WARNING hello text\n", capsys.readouterr().err)
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml")


def test_uvicorn_logs_json_with_its_log_config(
    saved_loggers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.config.dictConfig(uvicorn_log_config("json"))
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 1)
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "c", "GET", "/", "1.1", 200)
    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["logger"], e["message"]) for e in entries] == [
        ("uvicorn.error", "Started server process [1]"),
        ("uvicorn.access", 'c - "GET / HTTP/1.1" 200'),
    ]


# --- the server's settings ------------------------------------------------------------------


def test_only_an_open_api_on_a_public_address_is_refused() -> None:
    assert open_public_problem(Settings(host="127.0.0.1", api_keys="")) is None
    assert open_public_problem(Settings(host="0.0.0.0", api_keys="k1,k2")) is None
    problem = open_public_problem(Settings(host="0.0.0.0", api_keys=" , "))
    assert problem is not None and "DDNM_API_KEYS" in problem and "127.0.0.1" in problem


def test_the_uvicorn_config_carries_the_timeouts(saved_loggers: None) -> None:
    config = uvicorn_config(Settings(port=8123, header_timeout_s=2.5, log_format="json"))
    assert config.factory and config.app == "service.main:create_app"
    assert config.port == 8123 and config.timeout_keep_alive == 5
    assert config.timeout_graceful_shutdown == 3 and config.limit_concurrency is None
    assert isinstance(config.http, type) and issubclass(config.http, HeaderTimeoutProtocol)
    assert config.http.header_timeout_s == 2.5


# --- BodyTimeout, driven directly -----------------------------------------------------------


class Client:
    """The server side of one request: the messages `receive()` hands out (None: wait forever,
    a number: wait that long first), and what the app sent."""

    def __init__(self, *messages: Message | float | None) -> None:
        self.messages = list(messages)
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        while self.messages:
            item = self.messages.pop(0)
            if item is not None and not isinstance(item, float | int):
                return item
            await asyncio.sleep(3600 if item is None else item)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)


HTTP_SCOPE: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}


def chunk(body: bytes, more: bool) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


async def answer(send: Send, status: int, body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def read_body_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the body, answering 400 on a disconnect (as FastAPI does), else 200 with it."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            await answer(send, 400)
            return
        body += message["body"]
        if not message["more_body"]:
            break
    await answer(send, 200, body)


def run_app(app: ASGIApp, client: Client, timeout_s: float = 0.05) -> None:
    asyncio.run(
        asyncio.wait_for(BodyTimeout(app, timeout_s)(HTTP_SCOPE, client.receive, client.send), 5)
    )


def test_a_stalled_body_gets_408_and_the_apps_answer_is_dropped() -> None:
    client = Client(chunk(b"part", more=True), None)
    run_app(read_body_app, client)
    assert [m.get("status") for m in client.sent] == [408, None]
    assert (b"connection", b"close") in client.sent[0]["headers"]
    detail = json.loads(client.sent[1]["body"])["detail"]
    assert detail == "request body not received within 0.05 s; send the whole body"


def test_a_body_in_time_passes_and_the_wait_after_it_is_untimed() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body_app(scope, receive, send)
        assert (await receive())["type"] == "http.disconnect"  # the client's, after 0.2 s

    client = Client(0.02, chunk(b"ab", more=True), 0.02, chunk(b"c", more=False), 0.2)
    run_app(app, client)
    assert [m.get("status") for m in client.sent] == [200, None]
    assert client.sent[1]["body"] == b"abc"


def test_an_app_failing_on_the_timeout_is_quiet_and_other_failures_are_not() -> None:
    async def fragile(scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] == "http.disconnect":
            raise RuntimeError("client disconnected")
        raise ValueError("a bug")

    timed_out = Client(None)
    run_app(fragile, timed_out)
    assert timed_out.sent[0]["status"] == 408
    with pytest.raises(ValueError, match="a bug"):
        run_app(fragile, Client(chunk(b"", more=False)))


def test_a_stalled_body_after_the_response_started_gets_no_408() -> None:
    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        message = await receive()
        await send({"type": "http.response.body", "body": message["type"].encode()})

    client = Client(None)
    run_app(streaming, client)
    assert [m.get("status") for m in client.sent] == [200, None]
    assert client.sent[1]["body"] == b"http.disconnect"


def test_other_scopes_pass_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    asyncio.run(BodyTimeout(app, 0.01)({"type": "lifespan"}, Client().receive, Client().send))
    assert seen == ["lifespan"]


@pytest.mark.integration
def test_several_api_processes_share_the_port_and_keep_the_header_timeout(
    tmp_path: Path,
) -> None:
    from cli.embedded import RedisServer, free_port

    with RedisServer() as redis_url:
        api = Api(free_port(), tmp_path / "stderr.log")
        env = server_env(
            DDNM_REDIS_URL=redis_url,
            DDNM_PORT=str(api.port),
            DDNM_API_WORKERS="2",
            DDNM_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        )
        with api.stderr.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=REPO, env=env, stderr=stderr
            )
        try:
            wait_until_up(process, api)
            workers = [
                p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == process.pid
            ]
            assert len(workers) >= 2  # uvicorn's supervisor and its two API processes
            with socket.create_connection(("127.0.0.1", api.port)) as sock:
                assert trickle(sock, HEADER_TIMEOUT_S + 3)  # cut off in a worker process too
            assert all(httpx.get(f"{api.url}/healthz").status_code == 200 for _ in range(10))
        finally:
            process.terminate()
            process.wait(15)


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1
