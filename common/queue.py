"""The Celery side both packages share: configuration for long GPU jobs, and the producer.

The API enqueues by task name, so it needs Celery but never the worker package (or torch).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from common import keys
from common.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for jobs that take seconds to minutes on one GPU each."""
    visibility = {"visibility_timeout": settings.visibility_timeout_s}
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # keep reconnecting while Redis is away
        # A message is acknowledged only after the job ran; if the process running it dies, the
        # message goes back to the queue instead of being lost.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # On a broker reconnect a running job keeps running (its lease keeps a redelivered copy
        # from starting twice) instead of being killed and redone.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_prefetch_multiplier": 1,
        # The broker redelivers unacknowledged messages after the visibility timeout, which must
        # outlive the hard time limit. Celery reads it in these three places.
        # Queues are polled in the order a worker lists them (BRPOP checks its keys in order),
        # so interactive jobs always go before batch jobs (`sdq worker` lists SDQ_QUEUE first).
        "broker_transport_options": {**visibility, "queue_order_strategy": "priority"},
        "result_backend_transport_options": visibility,
        "visibility_timeout": settings.visibility_timeout_s,
        "task_time_limit": settings.job_time_limit_s,
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,  # the job store holds state, not Celery's result backend
        "task_default_queue": settings.queue,
        "task_create_missing_queues": True,
        # SIGTERM (a deploy) gives a running job this long to finish; then it is handed back to
        # the queue for another worker (`sdq worker` maps SIGTERM to Celery's soft shutdown).
        "worker_soft_shutdown_timeout": settings.shutdown_grace_s,
        # A prefork child loads the whole pipeline before it reports up.
        "worker_proc_alive_timeout": settings.model_load_timeout_s,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_enable_remote_control": True,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("sdq", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class JobQueue:
    """Puts job ids on the broker."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def enqueue(self, job_id: str, queue: str) -> None:
        self._app.send_task(
            keys.TASK_GENERATE,
            args=[job_id],
            queue=queue,
            # Fail fast when Redis is down: the caller answers 503 instead of hanging.
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        )
