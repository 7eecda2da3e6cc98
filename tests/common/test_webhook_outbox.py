"""The webhook outbox: events queued by the transitions themselves, once, only when wanted."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from common import keys
from common.batches import BatchStore
from common.jobstore import JobStore
from common.schemas import JobCreate, JobStatus, WebhookSpec
from common.storage import Storage

QUEUE = "sdq.outbox-test"


@pytest.fixture
def store(redis_server) -> Iterator[JobStore]:
    # A database of its own: no webhook worker of other tests dispatches these events, and
    # no worker's reaper touches these jobs.
    url = redis_server.extra["url"].removesuffix("/0") + "/3"
    store = JobStore.from_url(url, job_ttl_s=600, idempotency_ttl_s=600)
    yield store
    store.redis.flushdb()
    store.redis.close()


def _create(store: JobStore, events: list[str] | None = None, *, webhook: bool = True) -> str:
    spec = WebhookSpec(url="https://hooks.example/in", events=events).for_job() if webhook else None
    job_id, _ = store.create(
        JobCreate(prompt="a cat").normalised(), tenant="t-outbox", queue=QUEUE, webhook=spec
    )
    return job_id


def _outbox(store: JobStore, subject: str) -> list[dict[str, str]]:
    return [f for _, f in store.redis.xrange(keys.webhook_outbox()) if f["subject"] == subject]


def test_terminal_event_is_queued_once_with_the_job_as_it_ended(store: JobStore) -> None:
    job_id = _create(store)
    first = store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=3)
    assert store.finish(job_id, JobStatus.SUCCEEDED, token=first.token)
    # Everything that could repeat it: a second finish, a redelivery, a cancel, the reaper.
    assert not store.finish(job_id, JobStatus.SUCCEEDED, token=first.token)
    assert store.start(job_id, worker="w2", lease_ttl_s=5, max_attempts=3).verdict == "terminal"
    store.cancel(job_id)
    store.requeue_orphan(job_id, max_attempts=3)

    (entry,) = _outbox(store, job_id)  # default events: the terminal ones, not job.started
    assert entry["event"] == "job.succeeded"
    assert entry["kind"] == "job"
    assert entry["msg"] == f"msg_{job_id}_succeeded"
    snapshot = json.loads(entry["snapshot"])
    assert snapshot["status"] == "succeeded"
    assert snapshot["id"] == job_id
    assert json.loads(snapshot["webhook"])["url"] == "https://hooks.example/in"


def test_started_is_sent_once_even_when_the_job_starts_twice(store: JobStore) -> None:
    job_id = _create(store, ["job.started", "job.failed"])
    store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=3)
    store.redis.delete(keys.job_lease(job_id))  # its worker died
    assert store.requeue_orphan(job_id, max_attempts=3) == "requeued"
    second = store.start(job_id, worker="w2", lease_ttl_s=5, max_attempts=3)
    assert second.attempts == 2
    store.finish(job_id, JobStatus.SUCCEEDED, token=second.token)  # not subscribed

    events = [e["event"] for e in _outbox(store, job_id)]
    assert events == ["job.started"]


@pytest.mark.parametrize("how", ["cancel", "expire", "exhausted", "reaper"])
def test_every_way_of_ending_queues_its_event(store: JobStore, how: str) -> None:
    job_id = _create(store)
    if how == "cancel":
        assert store.cancel(job_id) == "canceled"
        expected = "job.canceled"
    elif how == "expire":
        store.redis.hset(keys.job(job_id), "deadline", "1")
        store.redis.zadd(keys.deadlines(), {job_id: 1})
        assert job_id in store.expire_overdue()
        expected = "job.expired"
    elif how == "exhausted":
        store.redis.hset(keys.job(job_id), "attempts", "3")
        assert store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=3).verdict == (
            "exhausted"
        )
        expected = "job.failed"
    else:
        store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=1)
        store.redis.delete(keys.job_lease(job_id))
        assert store.requeue_orphan(job_id, max_attempts=1) == "failed"
        expected = "job.failed"
    assert [e["event"] for e in _outbox(store, job_id)] == [expected]


def test_jobs_without_a_webhook_or_the_event_queue_nothing(store: JobStore) -> None:
    plain = _create(store, webhook=False)
    picky = _create(store, ["job.canceled"])
    for job_id in (plain, picky):
        started = store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=3)
        store.progress(job_id, 1, 2)
        store.finish(job_id, JobStatus.SUCCEEDED, token=started.token)
        assert _outbox(store, job_id) == []


def test_progress_is_opt_in_and_at_most_once_a_second(store: JobStore) -> None:
    job_id = _create(store, ["job.progress"])
    store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=3)
    for step in range(1, 6):
        store.progress(job_id, step, 5)
    (entry,) = _outbox(store, job_id)
    assert entry["event"] == "job.progress"
    assert entry["msg"] == f"msg_{job_id}_progress_1_1"
    assert json.loads(entry["snapshot"])["step"] == "1"

    # A second later (as Redis's clock says), the next step is sent.
    last = int(store.redis.hget(keys.job(job_id), "webhook_progress_ms"))
    store.redis.hset(keys.job(job_id), "webhook_progress_ms", last - 1000)
    store.progress(job_id, 5, 5)
    assert [e["msg"] for e in _outbox(store, job_id)][1] == f"msg_{job_id}_progress_1_5"
    store.progress(job_id, 5, 5, write=False)  # a cancel check only: no event
    assert len(_outbox(store, job_id)) == 2


def test_a_batch_announces_its_end_once(store: JobStore, storage: Storage) -> None:
    batches = BatchStore(store, storage, ttl_s=600)
    spec = WebhookSpec(url="https://hooks.example/b").for_batch()
    batches.create("b-outbox", tenant="t-outbox", total=0, metadata={}, webhook=spec)
    batches.mark_submitted("b-outbox")

    assert batches.finalize("b-outbox")
    assert not batches.finalize("b-outbox")
    assert not batches._finish(keys=[keys.batch("b-outbox")], args=["1", "{}"])

    (entry,) = _outbox(store, "b-outbox")
    assert (entry["kind"], entry["event"]) == ("batch", "batch.completed")
    assert entry["msg"] == "msg_b-outbox_completed"
