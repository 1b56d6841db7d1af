"""`python -m worker`: load the model, announce it, then consume its queue, DDNM_WORKER_SLOTS jobs
at a time, their samplers batched into shared forwards by one scheduler thread.

The model is loaded before the Celery consumer starts, so a worker never takes a job it cannot run;
while loading fails (missing file, failed download, no GPU) the worker stays not-ready, says why in
its heartbeat (shown by the API's /readyz), and retries.
"""

from __future__ import annotations

import logging
import os
import time

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from contract.jobs import MODELS_KEY, queue_name
from contract.logs import configure_logging
from contract.settings import Settings
from pipeline.models import ServedModel, load_model
from worker import tasks
from worker.celery_app import configure
from worker.heartbeat import HeartbeatThread, worker_id
from worker.scheduler import Scheduler

log = logging.getLogger("worker")
LOAD_RETRY_S = 30.0
# Each Redis command is retried with backoff for about 30 s (0.1, 0.2, .., then 2 s apart), so a
# job under way rides out a Redis restart instead of failing on its next progress write.
REDIS_RETRY = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20)


def load_until_ready(
    settings: Settings, heartbeat: HeartbeatThread, scheduler: Scheduler
) -> ServedModel:
    """The model, loaded on the scheduler thread (the one that computes)."""
    while True:
        try:
            return scheduler.call(load_model, settings)
        except Exception as err:
            message = f"cannot load model {settings.model!r}: {type(err).__name__}: {err}"
            log.error("%s; retrying in %.0f s", message, LOAD_RETRY_S)
            heartbeat.update(ready=False, message=message)
            time.sleep(LOAD_RETRY_S)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format)
    this_worker = worker_id(os.getpid())
    redis = Redis.from_url(settings.redis_url, retry=REDIS_RETRY)
    heartbeat = HeartbeatThread(redis, settings, this_worker)
    heartbeat.beat()
    heartbeat.start()
    scheduler = Scheduler(settings.batch_max_samples)
    scheduler.start()
    model = load_until_ready(settings, heartbeat, scheduler)
    scheduler.serve(model.eps)
    redis.hset(MODELS_KEY, model.info.name, model.info.model_dump_json())
    heartbeat.update(ready=True, message="", info=model.info, device=str(model.device))
    log.info("serving %s (%s) on %s", model.info.name, model.info.checkpoint_sha256, model.device)
    tasks.RUNTIME = tasks.Runtime(settings, redis, model, this_worker, heartbeat, scheduler)
    try:
        configure(settings).worker_main(
            [
                "worker",
                "--pool=threads",  # a thread per held job; the scheduler runs their samplers
                f"--concurrency={settings.worker_slots}",
                f"--queues={queue_name(model.info.name)}",
                f"--hostname={this_worker}@%h",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
            ]
        )
    finally:
        scheduler.stop()
        heartbeat.stop()


if __name__ == "__main__":
    main()
