"""A worker's Prometheus endpoint and what feeds it.

Job outcomes are counted where they happen: :class:`MeteredJobStore` is the job store of the
worker's runtime, and counts every terminal transition it makes (the runner finishing a job,
from whichever thread and for whichever job of a micro-batch; a job whose attempts ran out or
whose deadline passed; the reaper's verdicts), with the job's timings, image count and NSFW
flags. Counting at the task boundary instead would miss jobs that finish after their task
returned (uploads overlap the next generation) and the companions of a batch, which never had a
task of their own. Celery signals keep ``sdq_worker_busy`` and start the endpoint.

The endpoint is served by the prefork child that runs the jobs, on ``SDQ_WORKER_METRICS_PORT``
(0: off), from when that child starts (``sdq_worker_ready`` is 0 while the pipeline loads). One
Celery worker runs one child (concurrency 1), so each worker process needs its own port: one
per container or pod, or one per GPU on a bare host.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import signals
from prometheus_client import start_http_server

from common import keys
from common import metrics as m
from common.jobstore import JobStore, StartOutcome
from common.schemas import JobResult, JobStatus, Timings
from common.settings import get_settings

log = logging.getLogger(__name__)


class MeteredJobStore(JobStore):
    """The job store, counting the terminal transitions this process makes."""

    def start(self, job_id: str, *args: Any, **kwargs: Any) -> StartOutcome:
        outcome = super().start(job_id, *args, **kwargs)
        if outcome.verdict == "exhausted":  # delivered too often: failed worker_lost
            self._count(job_id, JobStatus.FAILED)
        elif outcome.verdict == "expired":  # its deadline passed while it waited
            self._count(job_id, JobStatus.EXPIRED)
        return outcome

    def finish(self, job_id: str, status: JobStatus, *args: Any, **kwargs: Any) -> bool:
        done = super().finish(job_id, status, *args, **kwargs)
        if done:
            self._count(job_id, status, kwargs.get("timings"), kwargs.get("result"))
        return done

    def transition(self, job_id: str, status: JobStatus, *args: Any, **kwargs: Any) -> bool:
        done = super().transition(job_id, status, *args, **kwargs)
        if done and JobStatus(status).is_terminal:
            self._count(job_id, status)
        return done

    def requeue_orphan(self, job_id: str, *args: Any, **kwargs: Any) -> str:
        outcome = super().requeue_orphan(job_id, *args, **kwargs)
        if outcome == "failed":  # its worker vanished and it had no attempts left
            self._count(job_id, JobStatus.FAILED)
        return outcome

    def expire_overdue(self, *args: Any, **kwargs: Any) -> list[str]:
        expired = super().expire_overdue(*args, **kwargs)
        for job_id in expired:
            self._count(job_id, JobStatus.EXPIRED)
        return expired

    def _count(
        self,
        job_id: str,
        status: JobStatus,
        timings: Timings | None = None,
        result: JobResult | None = None,
    ) -> None:
        try:
            queue = self.redis.hget(keys.job(job_id), "queue") or ""
        except redis.RedisError:
            queue = ""  # still count the outcome; only its queue label is unknown
        try:
            m.job_finished(queue, JobStatus(status), timings=timings, result=result)
        except Exception:  # a metric must never cost a job its outcome
            log.exception("could not count the end of job %s", job_id)


def _pipeline_loaded() -> float:
    from worker import app as worker_app  # imported lazily: worker.app imports this module

    try:
        return 1.0 if worker_app.runtime.cache_info().currsize else 0.0
    except AttributeError:
        return 0.0


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
def _task_starts(task: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) == keys.TASK_GENERATE:
        m.WORKER_BUSY.set(1)


@signals.task_postrun.connect
def _task_ran(task: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) == keys.TASK_GENERATE:
        m.WORKER_BUSY.set(0)
