"""The worker's job store counts each terminal transition it makes, once, on real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis
from prometheus_client import REGISTRY

from common import keys
from common.schemas import ImageResult, JobCreate, JobResult, JobStatus, Timings
from worker.metrics import MeteredJobStore


@pytest.fixture
def store(redis_client: redis.Redis) -> MeteredJobStore:
    return MeteredJobStore(redis_client, job_ttl_s=600, idempotency_ttl_s=600)


@pytest.fixture
def queue() -> str:
    return f"sdq.metered-{uuid.uuid4().hex[:8]}"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def new_job(store: MeteredJobStore, queue: str, images: int = 1) -> str:
    request = JobCreate(prompt="p", seed=1, num_images_per_prompt=images).normalised()
    job_id, _ = store.create(request, tenant="metrics", queue=queue)
    return job_id


def test_a_finished_job_is_counted_once_with_its_timings_and_images(
    store: MeteredJobStore, queue: str
) -> None:
    job_id = new_job(store, queue, images=2)
    outcome = store.start(job_id, worker="w:1", lease_ttl_s=10, max_attempts=3)
    images = [
        ImageResult(
            key=f"jobs/{job_id}/{n}.png",
            width=64,
            height=64,
            seed=1 + n,
            prompt_index=0,
            content_type="image/png",
            nsfw_content_detected=flagged,
        )
        for n, flagged in enumerate([True, False])
    ]
    result = JobResult(images=images, nsfw_content_detected=[True, False], manifest_key="m")
    timings = Timings(queue_s=0.5, inference_s=2.0, upload_s=0.1, total_s=2.7)

    for _ in range(2):  # the second finish is refused: a terminal status never changes
        store.finish(
            job_id, JobStatus.SUCCEEDED, token=outcome.token, result=result, timings=timings
        )

    done = {"queue": queue, "status": "succeeded"}
    assert sample("sdq_jobs_finished_total", **done) == 1
    assert sample("sdq_images_generated_total", queue=queue) == 2
    assert sample("sdq_nsfw_flagged_total", queue=queue) == 1
    assert sample("sdq_job_queue_wait_seconds_sum", queue=queue) == 0.5
    assert sample("sdq_job_inference_seconds_count", queue=queue) == 1
    assert sample("sdq_job_upload_seconds_sum", queue=queue) == 0.1
    assert sample("sdq_job_total_seconds_bucket", le="5.0", **done) == 1


def test_failures_count_without_images(store: MeteredJobStore, queue: str) -> None:
    job_id = new_job(store, queue)
    outcome = store.start(job_id, worker="w:1", lease_ttl_s=10, max_attempts=3)
    store.finish(job_id, JobStatus.FAILED, token=outcome.token, timings=Timings(total_s=1.0))

    assert sample("sdq_jobs_finished_total", queue=queue, status="failed") == 1
    assert sample("sdq_images_generated_total", queue=queue) == 0


def test_a_job_out_of_attempts_counts_as_failed(
    store: MeteredJobStore, queue: str, redis_client: redis.Redis
) -> None:
    job_id = new_job(store, queue)
    store.start(job_id, worker="w:1", lease_ttl_s=10, max_attempts=1)
    redis_client.delete(keys.job_lease(job_id))  # its worker died: the lease is gone

    outcome = store.start(job_id, worker="w:2", lease_ttl_s=10, max_attempts=1)

    assert outcome.verdict == "exhausted"
    assert sample("sdq_jobs_finished_total", queue=queue, status="failed") == 1


def test_only_terminal_transitions_count(store: MeteredJobStore, queue: str) -> None:
    job_id = new_job(store, queue)
    store.transition(job_id, JobStatus.RUNNING, allowed_from=(JobStatus.QUEUED,))
    store.transition(job_id, JobStatus.CANCELED, allowed_from=(JobStatus.RUNNING,))

    assert sample("sdq_jobs_finished_total", queue=queue, status="running") == 0
    assert sample("sdq_jobs_finished_total", queue=queue, status="canceled") == 1
