"""Micro-batching and overlapped uploads: the runner in-process on the real tiny pipeline, real
Redis and real S3 (no Celery: deliveries are calls to ``runner.run``)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from common.jobstore import JobStore
from common.schemas import JobCreate, JobStatus
from common.settings import Settings
from common.storage import Storage
from worker.pipeline import PipelineHolder
from worker.runner import JobRunner, WorkerState

QUEUE = "sdq.batching-test"
BODY = {"width": 64, "height": 64, "num_inference_steps": 3}


@pytest.fixture(scope="module")
def holder(settings: Settings) -> PipelineHolder:
    pipeline = PipelineHolder(settings)
    pipeline.load()
    return pipeline


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    job_store = JobStore.from_url(settings.redis_url, job_ttl_s=600, idempotency_ttl_s=600)
    yield job_store
    for job_id in job_store.redis.zrange(f"sdq:queue:{QUEUE}:pending", 0, -1):
        job_store.cancel(job_id)  # leave nothing queued for the next test
    job_store.redis.close()


def _runner(settings: Settings, store: JobStore, storage: Storage, holder, **changes) -> JobRunner:
    tuned = settings.model_copy(update={"queue": QUEUE, "batch_window_s": 0, **changes})
    return JobRunner(tuned, store, storage, holder, WorkerState(name="batch-test:1"))


def _queue(store: JobStore, **body) -> str:
    job_id, _ = store.create(JobCreate(**{**BODY, **body}).normalised(), tenant="t-b", queue=QUEUE)
    return job_id


def _pixels(storage: Storage, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.get(key))).convert("RGB"), dtype=np.int16)


def test_compatible_queued_jobs_share_one_batch(
    settings: Settings, store: JobStore, storage: Storage, holder: PipelineHolder
) -> None:
    lead = _queue(store, prompt="a", seed=1)
    mates = [_queue(store, prompt="b", seed=2, num_images_per_prompt=2), _queue(store, prompt="c")]
    other_size = _queue(store, prompt="d", width=128)
    too_many = _queue(store, prompt="e", num_images_per_prompt=8)
    runner = _runner(settings, store, storage, holder, max_batch=4)

    runner.run(lead)
    runner.uploader.wait_idle()

    for job_id in [lead, *mates]:
        record = store.get(job_id)
        assert record.status is JobStatus.SUCCEEDED
        assert record.worker == "batch-test:1"
        assert record.step == record.total_steps
        assert all(storage.exists(i.key) for i in record.result.images)
    assert store.get(mates[0]).result.images[1].seed == 3
    assert store.get(other_size).status is JobStatus.QUEUED
    assert store.get(too_many).status is JobStatus.QUEUED
    # The companions' own deliveries come later and change nothing.
    runner.run(mates[0])
    assert store.get(mates[0]).attempts == 1


def test_batched_images_match_unbatched(holder: PipelineHolder) -> None:
    requests = [
        JobCreate(**BODY, prompt=p, seed=s).normalised() for p, s in (("x", 5), ("y", 6), ("z", 7))
    ]
    alone = [holder.generate(r, lambda step, total: None).images[0] for r in requests]
    together = holder.generate_batch(requests, lambda step, total: None)

    for single, batched in zip(alone, together, strict=True):
        difference = np.abs(single.astype(np.int16) - batched.images[0].astype(np.int16))
        # Batched CPU kernels round differently in the last float bits: at most one level.
        assert difference.max() <= 1


def test_lone_job_takes_company_that_arrives_within_the_window(
    settings: Settings, store: JobStore, storage: Storage, holder: PipelineHolder, monkeypatch
) -> None:
    lead = _queue(store, prompt="lonely")
    arrived: list[str] = []
    real_peek = store.peek_pending

    def peek_then_arrive(queue: str, limit: int):
        found = real_peek(queue, limit)
        if not arrived:  # first look: nobody yet; a compatible job arrives right after it
            arrived.append(_queue(store, prompt="late company"))
        return found

    monkeypatch.setattr(store, "peek_pending", peek_then_arrive)
    runner = _runner(settings, store, storage, holder, batch_window_s=30)

    runner.run(lead)
    runner.uploader.wait_idle()

    assert store.get(arrived[0]).status is JobStatus.SUCCEEDED
    assert store.get(arrived[0]).worker == "batch-test:1"


def test_cancel_one_job_of_a_batch(
    settings: Settings, store: JobStore, storage: Storage, holder: PipelineHolder
) -> None:
    keep, drop = _queue(store, prompt="keep"), _queue(store, prompt="drop")
    runner = _runner(settings, store, storage, holder)
    real_generate = holder.generate_batch

    def cancel_after_claiming(requests, on_step):
        store.cancel(drop)  # the client cancels while the batch is on the GPU
        return real_generate(requests, on_step)

    holder.generate_batch = cancel_after_claiming
    try:
        runner.run(keep)
    finally:
        del holder.generate_batch
    runner.uploader.wait_idle()

    assert store.get(drop).status is JobStatus.CANCELED
    assert not storage.exists(f"jobs/{drop}/0.png")
    assert store.get(keep).status is JobStatus.SUCCEEDED


def test_job_succeeds_only_after_its_images_are_stored(
    settings: Settings, store: JobStore, storage: Storage, holder: PipelineHolder
) -> None:
    job_id = _queue(store, prompt="slow storage")
    gate = threading.Event()

    class GatedStorage:
        def put(self, key: str, body: bytes, content_type: str) -> None:
            gate.wait(timeout=60)
            storage.put(key, body, content_type)

    runner = _runner(settings, store, GatedStorage(), holder)

    runner.run(job_id)  # returns once generated: the worker can take the next job
    assert store.get(job_id).status is JobStatus.RUNNING
    assert not storage.exists(f"jobs/{job_id}/0.png")
    gate.set()
    runner.uploader.wait_idle()

    record = store.get(job_id)
    assert record.status is JobStatus.SUCCEEDED
    assert _pixels(storage, record.result.images[0].key).shape == (64, 64, 3)
