"""The Celery app of the webhook workers: ``sdq worker --queues webhooks``.

CPU only: it never imports torch or loads a pipeline (a GPU worker's app is worker/app.py).
One process with a pool of threads (``SDQ_WEBHOOK_CONCURRENCY``), since a delivery mostly waits
on a receiver. Every process also runs the dispatcher and poller loops (worker/webhooks.py) and
writes a heartbeat, which ``sdq worker-check`` reads like a GPU worker's.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from functools import cache
from typing import Any

import redis
from celery import signals
from prometheus_client import start_http_server

from common import keys
from common.jobstore import JobStore
from common.logs import configure_logging, log_context
from common.queue import make_celery
from common.settings import get_settings
from common.storage import Storage
from common.webhooks import WebhookStore
from worker.webhooks import Deliverer, Dispatcher, Loops, Poller, process_name

log = logging.getLogger(__name__)

settings = get_settings()
app = make_celery(settings)
app.conf.task_default_queue = settings.webhook_queue
_nodename = socket.gethostname()


class Runtime:
    """What one webhook worker process keeps: stores, the deliverer, the loops."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.name = process_name(_nodename)
        self.jobs = JobStore.from_url(
            settings.redis_url,
            job_ttl_s=settings.job_ttl_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
        )
        self.webhooks = WebhookStore(self.jobs.redis, ttl_s=settings.job_ttl_s)
        self.storage = Storage(settings)
        self.deliverer = Deliverer(settings, self.webhooks)
        dispatcher = Dispatcher(
            settings,
            self.webhooks,
            self.jobs,
            self.storage,
            consumer=self.name,
            on_created=lambda: self.loops.wake(),
        )
        poller = Poller(settings, self.webhooks, send=self.send, backlog=self.backlog)
        self.loops = Loops(dispatcher, poller, beat=self.beat)

    def send(self, delivery_id: str, token: str) -> None:
        deliver.apply_async(
            args=[delivery_id, token],
            queue=settings.webhook_queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        )

    def backlog(self) -> int:
        """Delivery tasks waiting in the broker (Celery's Redis list is named after the queue)."""
        return self.jobs.redis.llen(settings.webhook_queue)

    def beat(self) -> None:
        now = time.time()
        fields = {
            "name": self.name,
            "queue": settings.webhook_queue,
            "model": "",
            "device": "cpu",
            "state": "idle",
            "started_at": repr(self.started_at),
            "last_beat": repr(now),
            "pid": str(os.getpid()),
        }
        ttl = max(1, round(settings.heartbeat_interval_s * keys.HEARTBEAT_MISSES))
        pipe = self.jobs.redis.pipeline()
        pipe.delete(keys.worker(self.name))
        pipe.hset(keys.worker(self.name), mapping=fields)
        pipe.expire(keys.worker(self.name), ttl)
        pipe.zadd(keys.webhook_workers(), {self.name: now})
        pipe.zremrangebyscore(keys.webhook_workers(), "-inf", now - 10 * ttl)
        pipe.execute()

    def stop(self) -> None:
        self.loops.stop()
        try:
            self.jobs.redis.delete(keys.worker(self.name))
            self.jobs.redis.zrem(keys.webhook_workers(), self.name)
        except redis.RedisError:
            log.warning("could not remove the heartbeat of %s", self.name)


@cache
def runtime() -> Runtime:
    return Runtime()


@app.task(name=keys.TASK_WEBHOOK_DELIVER, ignore_result=True)
def deliver(delivery_id: str, token: str) -> None:
    """One attempt of one delivery, if ``token`` is still its claim (else nothing)."""
    with log_context(delivery_id=delivery_id):
        runtime().deliverer.deliver(delivery_id, token)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(settings)


@signals.celeryd_init.connect
def _remember_nodename(sender: str | None = None, **_: Any) -> None:
    global _nodename
    if sender:
        _nodename = sender


@signals.worker_ready.connect
def _start(**_: Any) -> None:
    rt = runtime()
    rt.beat()
    rt.loops.start()
    try:
        rt.jobs.redis.sadd(keys.queues(), settings.webhook_queue)  # the API reports its depth
    except redis.RedisError as exc:
        log.warning("could not register queue %s: %s", settings.webhook_queue, exc)
    if settings.worker_metrics_port:
        try:
            start_http_server(settings.worker_metrics_port)
        except OSError as exc:
            log.warning("metrics endpoint not started: %s", exc)
    log.info("webhook worker %s delivering from queue %s", rt.name, settings.webhook_queue)


@signals.worker_shutdown.connect
def _stop(**_: Any) -> None:
    if runtime.cache_info().currsize:
        runtime().stop()
