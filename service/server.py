"""`python -m service`: the API under uvicorn, with the guards a server on a network needs.

- It refuses to start open (no DDNM_API_KEYS) on an address other than loopback.
- Header timeout (DDNM_HEADER_TIMEOUT_S): a connection whose request headers are not complete
  within it, counted from the connection's start or from the end of the previous response, is
  closed (`HeaderTimeoutProtocol`), so that slow clients cannot hold connections open.
- Body timeout (DDNM_BODY_TIMEOUT_S): `BodyTimeout` answers 408 when a part of a request body
  does not come within it (a body shorter than its Content-Length).
- Logs are JSON lines on stderr (DDNM_LOG_FORMAT, see `contract.logs`), uvicorn's included.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from typing import Any

import h11
import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors import Multiprocess

from contract.logs import configure_logging, uvicorn_log_config
from contract.settings import Settings, split

log = logging.getLogger("service.server")
APP_FACTORY = "service.main:create_app"
GRACEFUL_SHUTDOWN_S = 3
KEEP_ALIVE_S = 5
EXIT_CONFIG = 2  # refused to start: settings to fix
EXIT_STARTUP = 3  # uvicorn did not start (e.g. the port is taken)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that waits more than `header_timeout_s` for
    a request's headers.

    The timer runs while h11's server state is IDLE (no request headers yet in this cycle) or DONE
    (the response is sent; the rest of the body and the next request are awaited): it starts with
    the connection and again at the end of each response, and stops once a request's headers are
    complete. It is checked after each batch of received data and at each response's end.
    """

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._sync_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._sync_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync_header_timer()

    def _sync_header_timer(self) -> None:
        """Run the timer while headers are awaited, stop it otherwise; a running timer keeps its
        start."""
        awaiting = self.conn.our_state in (h11.IDLE, h11.DONE)
        if not awaiting or self.transport.is_closing():
            self._cancel_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            client = "{}:{}".format(*self.client) if self.client else "a client"
            self.logger.debug(
                "closing the connection of %s: no complete request headers within %g s",
                client,
                self.header_timeout_s,
            )
            self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """`HeaderTimeoutProtocol` with a header timeout of `timeout_s`, for uvicorn's `http=`."""

    class Configured(HeaderTimeoutProtocol):
        header_timeout_s = timeout_s

    return Configured


class BodyTimeout:
    """ASGI middleware: a `receive()` of a request body that gets nothing within `timeout_s`
    answers 408 (unless the response has started) and tells the app the client is gone
    (`http.disconnect`); what the app sends after that is dropped. Once the body is complete,
    `receive()` waits untimed (a streaming response listens there for the disconnect)."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _TimedRequest(self.timeout_s, receive, send).run(self.app, scope)


class _TimedRequest:
    """The state of one request under `BodyTimeout`."""

    def __init__(self, timeout_s: float, receive: Receive, send: Send) -> None:
        self.timeout_s = timeout_s
        self._receive = receive
        self._send = send
        self.body_complete = False
        self.response_started = False
        self.timed_out = False  # then the app is told the client left
        self.answered = False  # then the app's own sends are dropped

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self.receive, self.send)
        except Exception:
            if not self.timed_out:
                raise
            # the app failing on the disconnect it was given: the request is answered already
            log.debug("request ended after its body timed out", exc_info=True)

    async def receive(self) -> Message:
        if self.timed_out:
            return {"type": "http.disconnect"}
        if self.body_complete:
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), self.timeout_s)
        except TimeoutError:
            await self._body_late()
            return {"type": "http.disconnect"}
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_complete = True
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def _body_late(self) -> None:
        """Answer 408 (and close the connection) unless the app's response has started."""
        self.timed_out = True
        if self.response_started:
            return
        detail = f"request body not received within {self.timeout_s:g} s; send the whole body"
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        self.answered = True
        await self._send({"type": "http.response.start", "status": 408, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


class EnvHeaderTimeoutProtocol(HeaderTimeoutProtocol):
    """`HeaderTimeoutProtocol` with DDNM_HEADER_TIMEOUT_S read from the environment: the class
    the API's worker processes (DDNM_API_WORKERS > 1) import, as a class made at run time cannot
    be sent to them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = _env_header_timeout_s()


@functools.cache
def _env_header_timeout_s() -> float:
    return Settings().header_timeout_s


def open_public_problem(settings: Settings) -> str | None:
    """Why the API must not start with these settings (open on a non-loopback address), if so."""
    if split(settings.api_keys) or settings.loopback:
        return None
    return (
        f"DDNM_API_KEYS is empty and DDNM_HOST={settings.host} is not a loopback address: "
        "set keys, or bind 127.0.0.1"
    )


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for the API of `settings` (the app made by `APP_FACTORY`)."""
    return uvicorn.Config(
        APP_FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        http=(
            header_timeout_protocol(settings.header_timeout_s)
            if settings.api_workers == 1
            else EnvHeaderTimeoutProtocol
        ),
        workers=settings.api_workers,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_config=uvicorn_log_config(settings.log_format),
    )


def serve(settings: Settings) -> int:
    """Run the API until it is stopped; the exit status."""
    configure_logging(settings.log_format)
    problem = open_public_problem(settings)
    if problem is not None:
        log.error(problem)
        return EXIT_CONFIG
    if not split(settings.api_keys):
        log.warning(
            "the API runs without keys (DDNM_API_KEYS is empty): anyone who can reach "
            "%s:%d may use it",
            settings.host,
            settings.port,
        )
    config = uvicorn_config(settings)
    if settings.api_workers > 1:  # processes sharing one socket, each with its own event loop
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return 0
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else EXIT_STARTUP


def main() -> None:
    """`python -m service`: read the settings from the environment and serve."""
    try:
        settings = Settings()
    except ValidationError as err:
        configure_logging("json")
        log.error("invalid settings: %s", err)
        sys.exit(EXIT_CONFIG)
    sys.exit(serve(settings))
