"""The restore task: thin glue between the job record, the job pipeline (`pipeline.job`) and the
worker's scheduler, which runs the sampler of every job the worker holds (`worker.scheduler`).
Each task runs on a thread of Celery's pool (DDNM_WORKER_SLOTS of them)."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from celery.exceptions import Reject
from celery.signals import worker_shutting_down
from redis import Redis

from contract.jobs import TASK_NAME, JobRecord, job_key
from contract.settings import Settings
from contract.spec import TaskSpec
from ddnm.sampling import StepInfo
from pipeline.job import prepare
from pipeline.models import ServedModel
from worker.celery_app import app
from worker.heartbeat import HeartbeatThread
from worker.records import JobCanceled, JobLost, JobRun, JobTimedOut, WorkerStopping
from worker.scheduler import Scheduler

log = logging.getLogger(__name__)
INTERNAL_ERROR = "the worker failed while running this job; it is logged under the job's id"


class JobInputError(ValueError):
    """A job that cannot run as submitted; its message, shown to the client, says why."""


@dataclass(frozen=True)
class Runtime:
    """What a worker process holds for all its jobs (set once by `python -m worker`)."""

    settings: Settings
    redis: Redis
    model: ServedModel
    worker_id: str
    heartbeat: HeartbeatThread
    scheduler: Scheduler
    stopping: threading.Event = field(default_factory=threading.Event)  # set on warm shutdown


RUNTIME: Runtime | None = None


@worker_shutting_down.connect
def _stop_the_running_job(**_: object) -> None:
    """SIGTERM (docker stop, scaling down): every job under way stops at its next step and goes
    back to the queue, for another worker, at once."""
    if RUNTIME is not None:
        RUNTIME.stopping.set()


@app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def restore(job_id: str, dispatch: int = 0) -> None:
    """Run job `job_id` and record its outcome; a job that is gone, canceled, done or handed on
    (its message stale: `dispatch` is not the job's current one) is skipped."""
    rt = RUNTIME
    assert rt is not None, "the worker process loads its model before consuming"
    run = JobRun(rt.redis, rt.settings, job_id, rt.worker_id, rt.stopping)
    record = run.start(rt.model.info.checkpoint_sha256, dispatch)
    if record is None:
        log.info("job skipped: canceled, done, expired or handed on", extra={"job_id": job_id})
        return
    rt.heartbeat.hold(job_id)
    try:
        spec, image, mask = _inputs(rt, job_id, record)
        steps: queue.SimpleQueue[StepInfo] = queue.SimpleQueue()
        fused = rt.settings.fused_windows
        job = rt.scheduler.call(prepare, rt.model, spec, image, mask, steps.put, fused)
        x = rt.scheduler.follow(job.run, spec.priority, steps, run.on_step)
        result = rt.scheduler.call(job.finish, x)
    except JobCanceled:
        run.cancel()
    except JobLost:
        log.warning("job handed on by the API; this attempt stops", extra={"job_id": job_id})
    except (JobTimedOut, JobInputError) as err:
        run.fail(str(err))
    except WorkerStopping as err:
        run.requeue()
        raise Reject(str(err), requeue=True) from err
    except Exception:  # a job's failure is recorded, not raised: the worker goes on
        log.exception("job failed", extra={"job_id": job_id})
        run.fail(INTERNAL_ERROR)  # the client gets no exception text; the log has it
    else:
        run.succeed(result.png, **result.record_fields())
    finally:
        rt.heartbeat.release(job_id)


def _inputs(rt: Runtime, job_id: str, record: JobRecord) -> tuple[TaskSpec, bytes, bytes | None]:
    """The job's spec, image and mask; JobInputError when they cannot be run here."""
    if record.model != rt.model.info.name:
        raise JobInputError(f"job asks for model {record.model!r}, not {rt.model.info.name!r}")
    image: bytes | None = rt.redis.get(job_key(job_id, "image"))  # type: ignore[assignment]
    if image is None:
        raise JobInputError("the uploaded image has expired; submit the job again")
    spec = TaskSpec.model_validate_json(record.spec)
    mask: bytes | None = rt.redis.get(job_key(job_id, "mask")) if spec.has_mask else None  # type: ignore[assignment]
    return spec, image, mask
