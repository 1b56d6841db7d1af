"""A job's record, result, progress events and cancellation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Response
from fastapi.responses import StreamingResponse

from contract.jobs import JobRecord, Status
from service.auth import Caller, CallerDep
from service.deps import HubDep, StoreDep
from service.jobs import JobStore
from service.schemas import Error, Job

router = APIRouter(
    prefix="/jobs", tags=["jobs"], responses={401: {"model": Error}, 422: {"model": Error}}
)

JobId = Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="as returned by POST /restore")]
EVENTS_KEEPALIVE_S = 15.0


async def _record(store: JobStore, caller: Caller, job_id: str) -> JobRecord:
    """The caller's job: another key's job is as unknown as one that never was (404)."""
    record = await store.get(job_id, caller.owner)
    if record is None:
        raise HTTPException(404, f"no job {job_id} (unknown, or expired after it ended)")
    return record


@router.get("/{job_id}", responses={404: {"model": Error}})
async def get_job(job_id: JobId, store: StoreDep, caller: CallerDep) -> Job:
    """Status, progress, timestamps, the spec as run, model, seed, error, consistency."""
    return Job.from_record(job_id, await _record(store, caller, job_id))


@router.get(
    "/{job_id}/result",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the restored image"},
        404: {"model": Error},
        409: {"model": Error},
    },
)
async def get_result(job_id: JobId, store: StoreDep, caller: CallerDep) -> Response:
    """The restored image as PNG, once the job has succeeded."""
    record = await _record(store, caller, job_id)
    if record.status != Status.SUCCEEDED:
        raise HTTPException(409, f"job is {record.status}; the result exists once it succeeded")
    png = await store.result(job_id)
    if png is None:
        raise HTTPException(404, f"the result of job {job_id} has expired")
    return Response(png, media_type="image/png")


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        404: {"model": Error},
        429: {"model": Error},
    },
)
async def get_events(
    job_id: JobId,
    store: StoreDep,
    caller: CallerDep,
    hub: HubDep,
    last_event_id: Annotated[str | None, Header(pattern=r"^\d+-\d+$")] = None,
) -> StreamingResponse:
    """Server-sent events: `status` on every status change, `progress` as steps complete. The
    stream ends after the final status; reconnect with Last-Event-ID to resume."""
    if last_event_id is not None and any(int(p) >= 2**64 for p in last_event_id.split("-")):
        raise HTTPException(
            422, "Last-Event-ID: not an event id of this stream; send one it sent, or none"
        )
    await _record(store, caller, job_id)
    hub.open(caller.owner)
    events = hub.follow(caller.owner, job_id, last_event_id or "0-0", EVENTS_KEEPALIVE_S)
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.delete(
    "/{job_id}", status_code=202, responses={404: {"model": Error}, 409: {"model": Error}}
)
async def cancel_job(job_id: JobId, store: StoreDep, caller: CallerDep) -> Job:
    """Cancel a queued job at once, a running one at its next sampler step (at once when its
    worker has died)."""
    record = await _record(store, caller, job_id)
    if record.status.terminal:
        raise HTTPException(409, f"job already {record.status}")
    await store.cancel(job_id)
    return Job.from_record(job_id, await _record(store, caller, job_id))
