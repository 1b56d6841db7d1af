"""Response bodies of the API (the request spec is `contract.spec.TaskSpec`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from contract.jobs import Heartbeat, JobRecord, ModelInfo, Status
from contract.spec import TaskSpec


class Error(BaseModel):
    detail: str = Field(description="what was wrong and what to send instead")


def describe_error(loc: Sequence[Any], msg: str) -> str:
    """One pydantic validation error as "where: what", where = the dotted location."""
    where = ".".join(str(part) for part in loc)
    message = msg.removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class Progress(BaseModel):
    step: int = Field(description="sampler transitions done")
    total: int = Field(description="sampler transitions in all (0 until the job starts)")
    eta_s: float | None = Field(default=None, description="estimated seconds left")


class ModelUsed(BaseModel):
    name: str
    checkpoint_sha256: str | None = Field(description="of the weights the worker ran")


class Evaluation(BaseModel):
    """Evaluate mode: quality of the restoration against the uploaded clean image."""

    psnr: float = Field(description="dB, on 8-bit RGB")
    ssim: float


class Estimate(BaseModel):
    """What POST /restore would admit (POST /restore/estimate)."""

    spec: TaskSpec = Field(description="the spec as it would run (defaults and model filled in)")
    width: int = Field(description="of the restored image")
    height: int
    plan: dict[str, int] | None = Field(description="the tiling plan; null: one whole-image run")
    predicted_evaluations: int = Field(description="window-sized network evaluations")
    budget: int = Field(description="the most one job may need (DDNM_MAX_NETWORK_EVALUATIONS)")


class WebhookDelivery(BaseModel):
    at: float = Field(description="unix time of the call")
    status: int | None = Field(default=None, description="the receiver's HTTP status")
    error: str | None = Field(default=None, description="why there was no answer")


class Job(BaseModel):
    id: str
    status: Status
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: TaskSpec = Field(description="the spec as run: defaults, model and seed filled in")
    model: ModelUsed
    seed: int
    width: int = Field(description="of the restored image")
    height: int
    plan: dict[str, int] | None = Field(
        description="window side, overlap, windows and Mask-Shift waves of the tiling; null when "
        "the network runs once on the whole image"
    )
    predicted_evaluations: int = Field(
        description="predicted window-sized network evaluations: windows x calls x samples"
    )
    attempts: int = Field(
        description="times a worker started it (> 1 after a worker was lost or stopped)"
    )
    worker: str | None
    cancel_requested: bool
    error: str | None
    consistency: float | None = Field(
        description="||A x - y|| / ||y|| of the result x (0 up to rounding when sigma_y = 0)"
    )
    evaluation: Evaluation | None
    result_url: str | None = Field(description="the PNG, once succeeded")
    events_url: str
    webhook: str | None = Field(description="called with this record when the job ends")
    webhook_deliveries: list[WebhookDelivery] = Field(description="calls of the webhook so far")

    @classmethod
    def from_record(cls, job_id: str, record: JobRecord) -> Job:
        evaluation = None
        if record.psnr is not None and record.ssim is not None:
            evaluation = Evaluation(psnr=record.psnr, ssim=record.ssim)
        succeeded = record.status == Status.SUCCEEDED
        return cls(
            id=job_id,
            status=record.status,
            progress=Progress(step=record.step, total=record.total, eta_s=record.eta_s),
            created_at=datetime.fromtimestamp(record.created_at, UTC),
            started_at=_time(record.started_at),
            finished_at=_time(record.finished_at),
            spec=TaskSpec.model_validate_json(record.spec),
            model=ModelUsed(name=record.model, checkpoint_sha256=record.checkpoint_sha256),
            seed=record.seed,
            width=record.width,
            height=record.height,
            plan=None if record.plan is None else json.loads(record.plan),
            predicted_evaluations=record.predicted_evaluations,
            attempts=record.attempts,
            worker=record.worker,
            cancel_requested=record.cancel_requested_at is not None,
            error=record.error,
            consistency=record.consistency,
            evaluation=evaluation,
            result_url=f"/jobs/{job_id}/result" if succeeded else None,
            events_url=f"/jobs/{job_id}/events",
            webhook=record.webhook,
            webhook_deliveries=json.loads(record.webhook_deliveries or "[]"),
        )


def _time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


class Model(ModelInfo):
    default: bool = Field(description="used when a spec names no model")
    workers_ready: int = Field(description="worker processes serving it now")


class Health(BaseModel):
    status: str = "ok"


class WorkerState(BaseModel):
    """A worker process as /readyz shows it to a caller with a key (no job ids)."""

    worker: str
    model: str
    ready: bool
    message: str
    device: str

    @classmethod
    def of(cls, beat: Heartbeat) -> WorkerState:
        return cls.model_validate(beat.model_dump(include=set(cls.model_fields)))


class Readiness(BaseModel):
    ready: bool
    redis: bool
    workers_ready: int = Field(description="worker processes with their model loaded")
    workers: list[WorkerState] | None = Field(
        description="each worker process; only for a caller with a key (or on an open API)"
    )
    problems: list[str] = Field(description="why not ready")
