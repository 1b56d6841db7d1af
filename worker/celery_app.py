"""The Celery app of the workers, configured for long GPU jobs."""

from __future__ import annotations

import contextlib

from celery import Celery
from kombu.transport import redis

from contract.jobs import CELERY_WIRE
from contract.settings import Settings

app = Celery("ddnm", include=["worker.tasks"])


class _QoS(redis.QoS):
    """kombu's QoS for a worker whose jobs outlive a lost broker connection (the thread pool).

    When Redis goes away, kombu closes the channel while jobs still run on their threads: it
    would push their messages back to the queue through the closed connection, and a job that
    ends afterwards acknowledges on it; both raise AttributeError in kombu and end the worker.
    Neither is needed: an unacknowledged message stays in the "unacked" hash (redelivered after
    the visibility timeout, and then skipped as the job has ended or moved on), and the API's
    reaper hands on the jobs of a worker that dies.
    """

    restore_at_shutdown = False

    def ack(self, delivery_tag: str) -> None:
        with contextlib.suppress(AttributeError):  # the channel closed with its connection
            super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        with contextlib.suppress(AttributeError):
            super().reject(delivery_tag, requeue)


class _Channel(redis.Channel):
    QoS = _QoS


class Transport(redis.Transport):
    """kombu's Redis transport, without restoring unacknowledged messages at close."""

    Channel = _Channel


def configure(settings: Settings) -> Celery:
    """Point the app at Redis with the long-task settings:

    late acknowledgement + reject on worker loss: a job whose worker dies is handed out again;
    prefetch 1: a worker holds no job besides the one it runs;
    visibility timeout (> the job time limit): when an unacknowledged job counts as lost, checked
    every `redelivery_check_s` seconds by the live workers.
    """
    app.conf.update(
        broker_url=settings.redis_url,
        broker_transport="worker.celery_app:Transport",
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
