"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from redis.exceptions import RedisError

from service.auth import OptionalCallerDep
from service.deps import StoreDep
from service.metrics import render_metrics
from service.schemas import Health, Readiness, WorkerState

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    """The API process is up."""
    return Health()


@router.get("/readyz", responses={503: {"model": Readiness}})
async def readyz(store: StoreDep, caller: OptionalCallerDep) -> JSONResponse:
    """Ready when Redis answers and at least one worker has its model loaded (or, with
    DDNM_READY_WITHOUT_WORKERS, once any worker has announced a model). Worker names and their
    problems are shown to callers with a key only."""
    try:
        await store.redis.ping()
        beats = await store.heartbeats()
        ready = sum(b.ready for b in beats)
        # workers that scale from zero start once jobs wait: the API must admit jobs meanwhile
        on_demand = (
            not ready and store.settings.ready_without_workers and bool(await store.models())
        )
    except RedisError as err:
        log.warning("readiness: job store unavailable: %r", err)
        body = Readiness(
            ready=False, redis=False, workers_ready=0, workers=None, problems=["redis unreachable"]
        )
        return JSONResponse(body.model_dump(mode="json"), 503)
    admits = ready > 0 or on_demand
    problems = [] if admits else ["no worker with a loaded model"]
    workers = None
    if caller is not None:
        workers = [WorkerState.of(b) for b in beats]
        problems += [f"worker {b.worker}: {b.message}" for b in beats if not b.ready]
    body = Readiness(
        ready=admits, redis=True, workers_ready=ready, workers=workers, problems=problems
    )
    return JSONResponse(body.model_dump(mode="json"), 200 if body.ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(store: StoreDep) -> PlainTextResponse:
    """Prometheus text format: jobs by status, queue depth, workers, step and job durations."""
    return PlainTextResponse(
        await render_metrics(store), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
