"""The restore task: thin glue between the job record and the job pipeline (`pipeline.job`)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from celery.exceptions import Reject
from celery.signals import worker_shutting_down
from redis import Redis

from contract.jobs import TASK_NAME, job_key
from contract.settings import Settings
from contract.spec import TaskSpec
from pipeline.job import restore as run_job
from pipeline.models import ServedModel
from worker.celery_app import app
from worker.heartbeat import HeartbeatThread
from worker.records import JobCanceled, JobRun, JobTimedOut, WorkerStopping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What a worker process holds for all its jobs (set once by `python -m worker`)."""

    settings: Settings
    redis: Redis
    model: ServedModel
    worker_id: str
    heartbeat: HeartbeatThread
    stopping: threading.Event = field(default_factory=threading.Event)  # set on warm shutdown


RUNTIME: Runtime | None = None


@worker_shutting_down.connect
def _stop_the_running_job(**_: object) -> None:
    """SIGTERM (docker stop, scaling down): the job under way stops at its next step and goes
    back to the queue, instead of waiting for the visibility timeout after the worker is gone."""
    if RUNTIME is not None:
        RUNTIME.stopping.set()


@app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def restore(job_id: str) -> None:
    """Run job `job_id` and record its outcome; a job that is gone or canceled is skipped."""
    rt = RUNTIME
    assert rt is not None, "the worker process loads its model before consuming"
    run = JobRun(rt.redis, rt.settings, job_id, rt.worker_id, rt.stopping)
    record = run.start(rt.model.info.checkpoint_sha256)
    if record is None:
        log.info("job %s skipped: canceled, done or expired", job_id)
        return
    rt.heartbeat.update(job=job_id)
    try:
        if record.model != rt.model.info.name:
            raise ValueError(f"job asks for model {record.model!r}, not {rt.model.info.name!r}")
        image: bytes | None = rt.redis.get(job_key(job_id, "image"))  # type: ignore[assignment]
        if image is None:
            raise ValueError("the uploaded image has expired; submit the job again")
        spec = TaskSpec.model_validate_json(record.spec)
        mask: bytes | None = rt.redis.get(job_key(job_id, "mask")) if spec.has_mask else None  # type: ignore[assignment]
        result = run_job(rt.model, spec, image, mask, run.on_step, rt.settings.fused_windows)
    except JobCanceled:
        run.cancel()
    except JobTimedOut as err:
        run.fail(str(err))
    except WorkerStopping as err:
        run.requeue()
        raise Reject(str(err), requeue=True) from err
    except Exception as err:  # a job's failure is recorded, not raised: the worker goes on
        log.exception("job %s failed", job_id)
        run.fail(f"{type(err).__name__}: {err}")
    else:
        run.succeed(result.png, **result.record_fields())
    finally:
        rt.heartbeat.update(job=None)
