"""The Celery app of the workers, configured for long GPU jobs."""

from __future__ import annotations

from celery import Celery

from contract.jobs import CELERY_WIRE
from contract.settings import Settings

app = Celery("ddnm", include=["worker.tasks"])


def configure(settings: Settings) -> Celery:
    """Point the app at Redis with the long-task settings:

    late acknowledgement + reject on worker loss: a job whose worker dies is handed out again;
    prefetch 1: a worker holds no job besides the one it runs;
    visibility timeout (> the job time limit): when an unacknowledged job counts as lost, checked
    every `redelivery_check_s` seconds by the live workers.
    """
    app.conf.update(
        broker_url=settings.redis_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.redelivery_check_s,
            "unacked_restore_throttle": 1,
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        **CELERY_WIRE,
    )
    return app
