"""A worker's Prometheus endpoint, fed by Celery signals around each job.

The job record in Redis is the truth about a job, so the hooks read it rather than reach into the
runner: before the task the job's status is noted, after it the record says whether this delivery
ended the job and with what timings, images and NSFW flags. Imported by :mod:`worker.app` before
it connects its own handlers, so the endpoint is up (reporting ``sdq_worker_ready 0``) while the
pipeline loads.

The endpoint is served by the prefork child that runs the jobs, on ``SDQ_WORKER_METRICS_PORT``
(0: off). One Celery worker runs one child (concurrency 1), so each worker process needs its own
port: one per container or pod, or one per GPU on a bare host.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import signals
from prometheus_client import start_http_server

from common import keys
from common import metrics as m
from common.jobstore import JobNotFound, JobRecord, JobStore
from common.schemas import JobStatus
from common.settings import get_settings

log = logging.getLogger(__name__)

# task id -> the job's status before the run
_before: dict[str, str | None] = {}
_store: JobStore | None = None


def _job_store() -> JobStore:
    global _store
    if _store is None:  # one per process: a client must not cross a fork
        settings = get_settings()
        _store = JobStore.from_url(
            settings.redis_url,
            job_ttl_s=settings.job_ttl_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
        )
    return _store


def _pipeline_loaded() -> float:
    from worker import app as worker_app  # imported lazily: worker.app imports this module

    try:
        return 1.0 if worker_app.runtime.cache_info().currsize else 0.0
    except AttributeError:
        return 0.0


def _worker_name() -> str | None:
    from worker import app as worker_app

    try:
        if worker_app.runtime.cache_info().currsize:
            return worker_app.runtime().state.name
    except AttributeError:
        pass
    return None


def ended_here(before: str | None, record: JobRecord, worker_name: str | None) -> bool:
    """Whether the delivery that just ran moved the job to its terminal status.

    A duplicate delivery that waited on another worker's lease sees the job end too; it must not
    count it. A job whose attempts ran out ends in the delivery that finds it so, though its
    ``worker`` still names the process that died.
    """
    if not record.status.is_terminal:
        return False
    if before is None or JobStatus(before).is_terminal:
        return False  # it had ended before this delivery
    if record.worker is None or worker_name is None or record.worker == worker_name:
        return True
    return record.error is not None and record.error.code == "worker_lost"


@signals.worker_process_init.connect
def _serve(**_: Any) -> None:
    m.WORKER_READY.set_function(_pipeline_loaded)
    port = get_settings().worker_metrics_port
    if not port:
        return
    try:
        start_http_server(port)
    except OSError as exc:  # another worker process on this host has the port
        log.warning("metrics endpoint not started on port %d: %s", port, exc)
        return
    log.info("metrics on :%d/metrics", port)


@signals.worker_ready.connect
def _register_queues(sender: Any = None, **_: Any) -> None:
    """Tell the API which queues exist, so it reports the depth of each."""
    try:
        queues = list(sender.app.amqp.queues.consume_from)
    except AttributeError:
        return
    client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5)
    try:
        if queues:
            client.sadd(keys.queues(), *queues)
    except redis.RedisError as exc:
        log.warning("could not register queues %s: %s", queues, exc)
    finally:
        client.close()


@signals.task_prerun.connect
def _job_starts(task_id: str = "", task: Any = None, args: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) != keys.TASK_GENERATE or not args:
        return
    m.WORKER_BUSY.set(1)
    try:
        status = _job_store().redis.hget(keys.job(args[0]), "status")
    except redis.RedisError:
        status = None
    _before[task_id] = status


@signals.task_postrun.connect
def _job_ran(task_id: str = "", task: Any = None, args: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) != keys.TASK_GENERATE or not args:
        return
    m.WORKER_BUSY.set(0)
    before = _before.pop(task_id, None)
    try:
        record = _job_store().get(args[0])
    except (JobNotFound, redis.RedisError):
        return
    if ended_here(before, record, _worker_name()):
        m.job_finished(record.queue, record.status, timings=record.timings, result=record.result)
