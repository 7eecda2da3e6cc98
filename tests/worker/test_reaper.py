"""The reaper against a real Redis; the Celery producer is replaced by a recorder."""

from __future__ import annotations

import time

import pytest

from common import keys
from common.jobstore import JobStore
from common.schemas import JobCreate, JobStatus
from worker.reaper import Reaper

QUEUE = "sdq.reaper-test"


class RecordingQueue:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def enqueue(self, job_id: str, queue: str) -> None:
        self.sent.append((job_id, queue))


@pytest.fixture
def store(redis_server) -> JobStore:
    return JobStore.from_url(redis_server.extra["url"], job_ttl_s=600, idempotency_ttl_s=600)


def _reaper(store: JobStore, queue: RecordingQueue, max_attempts: int = 3) -> Reaper:
    return Reaper(store, queue, interval_s=1, lease_ttl_s=0.1, max_attempts=max_attempts)


def _running_orphan(store: JobStore) -> str:
    job_id, _ = store.create(JobCreate(prompt="orphan").normalised(), tenant="t-r", queue=QUEUE)
    store.start(job_id, worker="gone", lease_ttl_s=30, max_attempts=3)
    # Its worker host vanished: nobody renews the lease, which lapses.
    store.redis.delete(keys.job_lease(job_id))
    store.redis.zadd(keys.running(), {job_id: time.time() - 60})
    return job_id


def test_orphan_is_requeued_and_sent_again(store: JobStore) -> None:
    queue = RecordingQueue()
    job_id = _running_orphan(store)

    done = _reaper(store, queue).reap_once()

    assert job_id in done["requeued"]
    assert (job_id, QUEUE) in queue.sent
    record = store.get(job_id)
    assert record.status is JobStatus.QUEUED
    assert store.queue_position(record) is not None
    assert store.redis.zscore(keys.running(), job_id) is None


def test_orphan_out_of_attempts_fails(store: JobStore) -> None:
    job_id = _running_orphan(store)

    done = _reaper(store, RecordingQueue(), max_attempts=1).reap_once()

    assert job_id in done["failed"]
    record = store.get(job_id)
    assert record.status is JobStatus.FAILED
    assert record.error.code == "worker_lost"


def test_leased_job_is_left_alone(store: JobStore) -> None:
    job_id, _ = store.create(JobCreate(prompt="busy").normalised(), tenant="t-r", queue=QUEUE)
    store.start(job_id, worker="alive", lease_ttl_s=30, max_attempts=3)
    store.redis.zadd(keys.running(), {job_id: time.time() - 60})
    queue = RecordingQueue()

    _reaper(store, queue).reap_once()

    assert store.get(job_id).status is JobStatus.RUNNING
    assert queue.sent == []


def test_overdue_queued_job_expires(store: JobStore) -> None:
    request = JobCreate(prompt="late").normalised()
    job_id, _ = store.create(request, tenant="t-r", queue=QUEUE, deadline=time.time() - 1)
    keep, _ = store.create(request, tenant="t-r", queue=QUEUE, deadline=time.time() + 60)

    done = _reaper(store, RecordingQueue()).reap_once()

    assert job_id in done["expired"]
    assert store.get(job_id).status is JobStatus.EXPIRED
    assert store.get(keep).status is JobStatus.QUEUED
    assert store.start(job_id, worker="w", lease_ttl_s=1, max_attempts=3).verdict == "terminal"


def test_job_whose_message_was_never_published_gets_one(store: JobStore) -> None:
    request = JobCreate(prompt="orphaned at birth").normalised()
    lost, _ = store.create(request, tenant="t-r", queue=QUEUE)
    sent, _ = store.create(request, tenant="t-r", queue=QUEUE)
    store.mark_dispatched([sent])  # what the API does once the publish succeeded
    # The submitter died between storing `lost` and publishing it, a while ago.
    store.redis.zadd(keys.undispatched(), {lost: time.time() - keys.DISPATCH_GRACE_S - 1})
    queue = RecordingQueue()

    done = _reaper(store, queue).reap_once()

    assert done["dispatched"] == [lost]
    assert queue.sent == [(lost, QUEUE)]
    assert _reaper(store, queue).reap_once()["dispatched"] == []  # once
