"""The job store against a real Redis: atomic transitions, terminal states that never change."""

from __future__ import annotations

import pytest
import redis

from common import keys
from common.jobstore import IdempotencyConflict, JobNotFound, JobStore
from common.schemas import JobCreate, JobError, JobStatus

QUEUE = "sdq.store-test"


@pytest.fixture
def store(redis_server) -> JobStore:
    return JobStore.from_url(redis_server.extra["url"], job_ttl_s=600, idempotency_ttl_s=600)


def _create(store: JobStore, tenant: str = "t-store", **body) -> str:
    request = JobCreate(prompt=body.pop("prompt", "a cat"), **body).normalised()
    job_id, created = store.create(request, tenant=tenant, queue=QUEUE)
    assert created
    return job_id


def _statuses(store: JobStore, job_id: str) -> list[str]:
    return [e.fields["status"] for e in store.events(job_id) if e.fields["type"] == "status"]


def test_create_sets_ttl_and_queue_position(store: JobStore) -> None:
    first, second = _create(store), _create(store)
    record = store.get(second)
    assert record.status is JobStatus.QUEUED
    assert 0 < store.redis.ttl(keys.job(second)) <= 600
    assert store.queue_position(record) == store.queue_position(store.get(first)) + 1


def test_terminal_states_never_change(store: JobStore) -> None:
    job_id = _create(store)
    started = store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=3)
    assert started.verdict == "started"
    assert store.finish(job_id, JobStatus.SUCCEEDED, token=started.token)
    assert store.get(job_id).step == store.get(job_id).total_steps

    error = JobError(code="x", message="y")
    assert not store.finish(job_id, JobStatus.FAILED, token=started.token, error=error)
    for target in JobStatus:
        assert not store.transition(job_id, target, allowed_from=tuple(JobStatus))
    assert store.cancel(job_id) == "succeeded"
    assert store.start(job_id, worker="w2", lease_ttl_s=5, max_attempts=3).verdict == "terminal"
    assert store.get(job_id).status is JobStatus.SUCCEEDED
    assert _statuses(store, job_id) == ["queued", "running", "succeeded"]


def test_finish_releases_only_its_own_lease(store: JobStore) -> None:
    job_id = _create(store)
    started = store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=3)
    assert store.lease_ttl_ms(job_id) > 0
    assert not store.renew_lease(job_id, "someone-else", 5)
    assert store.finish(job_id, JobStatus.CANCELED, token=started.token)
    assert store.lease_ttl_ms(job_id) < 0


def test_second_delivery_is_refused_while_leased(store: JobStore) -> None:
    job_id = _create(store)
    assert store.start(job_id, worker="a", lease_ttl_s=5, max_attempts=3).verdict == "started"
    assert store.start(job_id, worker="b", lease_ttl_s=5, max_attempts=3).verdict == "leased"
    assert store.get(job_id).attempts == 1


def test_attempts_exhausted_fails_worker_lost(store: JobStore) -> None:
    job_id = _create(store)
    for attempt in (1, 2):
        outcome = store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=2)
        assert (outcome.verdict, outcome.attempts) == ("started", attempt)
        store.redis.delete(keys.job_lease(job_id))  # the worker died: its lease lapses
    assert store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=2).verdict == "exhausted"
    record = store.get(job_id)
    assert record.status is JobStatus.FAILED
    assert record.error.code == "worker_lost"
    assert _statuses(store, job_id) == ["queued", "running", "running", "failed"]


def test_cancel_queued_is_immediate_and_running_is_cooperative(store: JobStore) -> None:
    queued = _create(store)
    assert store.cancel(queued) == "canceled"
    assert store.queue_position(store.get(queued)) is None

    running = _create(store)
    started = store.start(running, worker="w", lease_ttl_s=5, max_attempts=3)
    assert not store.progress(running, 1, 50)
    assert store.cancel(running) == "requested"
    assert store.progress(running, 2, 50)  # the worker's next step sees the request
    assert store.get(running).status is JobStatus.RUNNING
    assert store.finish(running, JobStatus.CANCELED, token=started.token)
    assert store.cancel("no-such-job") == "missing"


def test_progress_written_only_while_running(store: JobStore) -> None:
    job_id = _create(store, num_inference_steps=10)
    store.progress(job_id, 5, 10)
    assert store.get(job_id).step == 0
    store.start(job_id, worker="w", lease_ttl_s=5, max_attempts=3)
    store.progress(job_id, 5, 10)
    store.progress(job_id, 6, 10, write=False)
    assert store.get(job_id).step == 5


def test_idempotency(store: JobStore) -> None:
    request = JobCreate(prompt="same").normalised()
    first, created = store.create(
        request, tenant="t-idem", queue=QUEUE, idempotency_key="k1", body_fingerprint="fp-a"
    )
    again, created_again = store.create(
        request, tenant="t-idem", queue=QUEUE, idempotency_key="k1", body_fingerprint="fp-a"
    )
    assert created
    assert not created_again
    assert first == again
    with pytest.raises(IdempotencyConflict):
        store.create(
            request, tenant="t-idem", queue=QUEUE, idempotency_key="k1", body_fingerprint="b"
        )
    other_tenant, created = store.create(
        request, tenant="t-other", queue=QUEUE, idempotency_key="k1", body_fingerprint="fp-a"
    )
    assert created
    assert other_tenant != first


def test_tenants_do_not_see_each_other(store: JobStore) -> None:
    job_id = _create(store, tenant="t-alice")
    with pytest.raises(JobNotFound):
        store.get(job_id, tenant="t-bob")
    assert store.get(job_id, tenant="t-alice").id == job_id
    page, _ = store.list(tenant="t-bob")
    assert job_id not in {r.id for r in page}


def test_list_skips_expired_records(store: JobStore) -> None:
    tenant = "t-expiry"
    kept, gone = _create(store, tenant=tenant), _create(store, tenant=tenant)
    store.redis.delete(keys.job(gone))
    page, cursor = store.list(tenant=tenant)
    assert [r.id for r in page] == [kept]
    assert cursor is None
    assert store.redis.zscore(keys.tenant_jobs(tenant), gone) is None


def test_discard_leaves_nothing(store: JobStore) -> None:
    request = JobCreate(prompt="doomed").normalised()
    job_id, _ = store.create(request, tenant="t-discard", queue=QUEUE, idempotency_key="kd")
    store.discard(job_id, tenant="t-discard", idempotency_key="kd")
    with pytest.raises(JobNotFound):
        store.get(job_id)
    assert not store.redis.exists(keys.idempotency("t-discard", "kd"))
    assert store.redis.zscore(keys.pending(QUEUE), job_id) is None


def test_redis_down_raises(tmp_path) -> None:
    store = JobStore.from_url("redis://127.0.0.1:1/0", job_ttl_s=60, idempotency_ttl_s=60)
    with pytest.raises(redis.ConnectionError):
        store.get("x")
