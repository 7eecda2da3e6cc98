"""The Celery app of the GPU workers, its one task, and the per-process runtime.

Start with ``sdq worker`` (one process per GPU, concurrency 1). The pipeline is loaded in the
prefork child that runs jobs, when that child starts, so the parent never touches CUDA.
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

from common import keys
from common.logs import configure_logging, log_context
from common.queue import JobQueue, make_celery
from common.settings import get_settings
from common.storage import Storage
from worker.batches import settle as settle_batch
from worker.heartbeat import Heartbeat
from worker.metrics import MeteredJobStore  # its signal handlers run before ours
from worker.pipeline import PipelineHolder
from worker.reaper import Reaper
from worker.runner import JobRunner, WorkerState

log = logging.getLogger(__name__)

settings = get_settings()
app = make_celery(settings)
_nodename = socket.gethostname()


class Runtime:
    """Everything one job-running process keeps between jobs."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.store = MeteredJobStore.from_url(
            settings.redis_url,
            job_ttl_s=settings.job_ttl_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
        )
        self.storage = Storage(settings)
        if settings.s3_create_bucket:
            self.storage.ensure_bucket()
        self.holder = PipelineHolder(settings)
        self.state = WorkerState(name=f"{_nodename}:{os.getpid()}")
        self.heartbeat = Heartbeat(
            self.store.redis, self.state.name, settings.heartbeat_interval_s, self.snapshot
        )
        self.runner = JobRunner(
            settings, self.store, self.storage, self.holder, self.state, self.heartbeat.poke
        )
        self.reaper = Reaper(
            self.store,
            JobQueue(app),
            interval_s=settings.reaper_interval_s,
            lease_ttl_s=settings.lease_ttl_s,
            max_attempts=settings.max_attempts,
        )

    def start(self) -> None:
        self.heartbeat.start()  # reports "loading" while the pipeline loads
        self.holder.load()
        self.heartbeat.poke()
        self.reaper.start()

    def snapshot(self) -> dict[str, Any]:
        if not self.holder.loaded:
            state = "loading"
        else:
            state = "busy" if self.state.current_job else "idle"
        return {
            "queue": settings.queue,
            "model": settings.model,
            "device": self.holder.device,
            "dtype": self.holder.dtype,
            "state": state,
            "current_job": self.state.current_job,
            "jobs_done": self.state.jobs_done,
            "pipeline_loads": self.holder.loads,
            "started_at": repr(self.started_at),
            "pid": os.getpid(),
            **self.holder.gpu_info(),
        }


@cache
def runtime() -> Runtime:
    rt = Runtime()
    rt.start()
    return rt


@app.task(name=keys.TASK_GENERATE)
def generate(job_id: str) -> None:
    """Generate the images of one job. Deliveries may repeat; the runner makes them harmless."""
    with log_context(job_id=job_id, tenant=_tenant_of(job_id)):
        rt = runtime()
        rt.runner.run(job_id)
        settle_batch(rt.store, rt.storage, job_id, settings.job_ttl_s)


def _tenant_of(job_id: str) -> str | None:
    """For the log lines of the job; the runner deals with Redis being away, not this."""
    try:
        return runtime().store.redis.hget(keys.job(job_id), "tenant")
    except redis.RedisError:
        return None


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connected, so Celery leaves logging alone: sdq's redacting JSON handler stays in place.
    configure_logging(settings)


@signals.celeryd_init.connect
def _remember_nodename(sender: str | None = None, **_: Any) -> None:
    global _nodename
    if sender:
        _nodename = sender


@signals.worker_process_init.connect
def _load_pipeline(**_: Any) -> None:
    runtime()


@signals.worker_process_shutdown.connect
def _say_goodbye(**_: Any) -> None:
    if runtime.cache_info().currsize:
        runtime().reaper.stop()
        runtime().runner.uploader.drain()  # images already generated still get stored
        runtime().heartbeat.stop()
