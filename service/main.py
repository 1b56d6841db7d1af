"""The FastAPI application: `uvicorn --factory service.main:create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from celery import Celery
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import OutOfMemoryError, RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.jobs import CELERY_WIRE, TASK_NAME
from contract.settings import Settings, split
from service import webhooks
from service.auth import Keys
from service.docs import add_docs, add_web_page
from service.events import EventHub, TooManyStreams
from service.jobs import Enqueue, JobStore, Refused
from service.routes import health, jobs, models, restore
from service.schemas import describe_error
from service.server import BodyTimeout
from service.uploads import UploadError

log = logging.getLogger("service")
STORE_RETRY_AFTER_S = "2"  # seconds a client should wait after a 503 of the job store

DESCRIPTION = """Zero-shot image restoration with DDNM / DDNM+ (Wang, Yu, Zhang, ICLR 2023).

`POST /restore` a degraded image and a task spec; a worker runs the job; poll `GET /jobs/{id}`
or follow `GET /jobs/{id}/events`, then fetch `GET /jobs/{id}/result`."""

# A command that meets a dropped connection (Redis restarted) is retried on a new one, for up to
# about 0.7 s; past that the request gets a 503.
REDIS_RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3)
POOL_TIMEOUT_S = 2.0  # a request waits this long for one of the API's Redis connections
LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "::1"]


def celery_enqueue(settings: Settings) -> Enqueue:
    """Send restore tasks by name: the API needs the queue, not the worker's code."""
    celery = Celery("ddnm-api", broker=settings.redis_url, set_as_current=False)
    celery.conf.update(CELERY_WIRE)

    def enqueue(job_id: str, queue: str, dispatch: int) -> None:
        celery.send_task(TASK_NAME, args=[job_id, dispatch], queue=queue)

    return enqueue


class BodyLimit:
    """Refuse request bodies over `limit` bytes (413): at once when Content-Length says so, else
    as soon as that many bytes have come (a chunked upload), before they fill the disk."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = HTTPException(413, f"request body over the limit of {self.limit} bytes")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": too_large.detail}, 413)(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise too_large  # FastAPI answers it while it reads the form
            return message

        await self.app(scope, receive_within_limit, send)


def redis_client(settings: Settings, connections: int) -> Redis:
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=connections, timeout=POOL_TIMEOUT_S, retry=REDIS_RETRY
    )
    return Redis(connection_pool=pool)


async def reap_forever(store: JobStore, interval_s: float) -> None:
    """Every `interval_s`: hand the jobs of dead workers back to the queue (`JobStore.reap`)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            for job_id, done in (await store.reap()).items():
                log.warning("job repaired: %s", done, extra={"job_id": job_id})
        except RedisError as err:
            log.warning("reaper: job store unavailable: %r", err)


def allowed_hosts(settings: Settings, keys: Keys) -> list[str]:
    """Host headers served: DDNM_ALLOWED_HOSTS, else loopback names when open (a page on another
    site cannot reach the open API through DNS rebinding), else any."""
    return split(settings.allowed_hosts) or (LOOPBACK_HOSTS if keys.open else ["*"])


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    keys = Keys(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = redis_client(settings, settings.redis_connections)
        reader = redis_client(settings, 2)
        app.state.store = store = JobStore(redis, settings, celery_enqueue(settings))
        app.state.hub = hub = EventHub(redis, reader, settings.max_streams_per_key)
        http = httpx.AsyncClient(timeout=webhooks.TIMEOUT_S, follow_redirects=False)
        tasks = [
            asyncio.create_task(hub.run()),
            asyncio.create_task(reap_forever(store, settings.reaper_interval_s)),
            asyncio.create_task(webhooks.Deliverer(store, keys, http).run()),
        ]
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await http.aclose()
        await reader.aclose()
        await redis.aclose()

    app = FastAPI(
        title="ddnm-service",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by add_docs, with local assets
        redoc_url=None,
    )
    add_docs(app)
    add_web_page(app)
    app.state.settings = settings
    app.state.keys = keys
    # an image, a mask and the spec
    app.add_middleware(BodyLimit, limit=2 * settings.max_upload_bytes + 2**20)
    app.add_middleware(BodyTimeout, timeout_s=settings.body_timeout_s)
    if split(settings.cors_origins):
        app.add_middleware(
            CORSMiddleware,
            allow_origins=split(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After"],
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings, keys))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        """One message, like every other refusal: "where: what" (loc less "body", "path", ..)."""
        problems = [describe_error(e["loc"][1:], e["msg"]) for e in err.errors()]
        if any(e["loc"][0] == "body" for e in err.errors()):
            problems.append(restore.PARTS_HELP)
        return JSONResponse({"detail": "; ".join(problems)}, 422)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, err: UploadError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, err.status_code)

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after_s)}
        detail = f"{err.detail}; retry after {err.retry_after_s} s"
        return JSONResponse({"detail": detail}, err.status_code, headers=headers)

    @app.exception_handler(TooManyStreams)
    async def too_many_streams(request: Request, err: TooManyStreams) -> JSONResponse:
        detail = f"{err}, the most a key may hold; close one first"
        return JSONResponse({"detail": detail}, 429, headers={"Retry-After": "5"})

    @app.exception_handler(RedisError)
    @app.exception_handler(OperationalError)
    async def store_unavailable(request: Request, err: Exception) -> JSONResponse:
        # the client gets no address or exception text of the infrastructure; the log does
        log.warning("job store unavailable on %s %s: %r", request.method, request.url.path, err)
        full = isinstance(err, OutOfMemoryError) or "OOM" in str(err)
        detail = f"the job store is {'full' if full else 'unavailable'}; retry later"
        return JSONResponse({"detail": detail}, 503, headers={"Retry-After": STORE_RETRY_AFTER_S})

    for module in (restore, jobs, models, health):
        app.include_router(module.router)
    return app
