"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from redis.exceptions import RedisError

from service.deps import StoreDep
from service.metrics import render_metrics
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    """The API process is up."""
    return Health()


@router.get("/readyz", responses={503: {"model": Readiness}})
async def readyz(store: StoreDep) -> JSONResponse:
    """Ready when Redis answers and at least one worker has its model loaded."""
    try:
        await store.redis.ping()
        workers = await store.heartbeats()
    except RedisError as err:
        body = Readiness(ready=False, redis=False, workers=[], problems=[f"redis: {err}"])
        return JSONResponse(body.model_dump(mode="json"), 503)
    problems = [f"worker {w.worker}: {w.message}" for w in workers if not w.ready]
    ready = any(w.ready for w in workers)
    if not ready:
        problems.append("no worker with a loaded model")
    body = Readiness(ready=ready, redis=True, workers=workers, problems=problems)
    return JSONResponse(body.model_dump(mode="json"), 200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(store: StoreDep) -> PlainTextResponse:
    """Prometheus text format: jobs by status, queue depth, workers, step and job durations."""
    return PlainTextResponse(
        await render_metrics(store), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
