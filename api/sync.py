"""Synchronous answers on the queue (``/score``, ``/v1/images/generations``).

They submit ordinary jobs with :func:`api.jobs.submit`, wait on the jobs' event streams with
:func:`api.jobs.wait_until_finished`, and read the images back from the bucket: the same queue,
workers and storage as ``/v1/jobs``. A wait that runs out answers 504 with the job ids; the jobs
go on, and their images can be fetched from ``/v1/jobs/{id}``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool

from api import jobs
from api.deps import Services
from api.errors import ApiError
from common.jobstore import JobRecord
from common.schemas import ImageResult, JobCreate, JobStatus

log = logging.getLogger(__name__)

# openai-python retries 5xx answers by default; a retry would queue the same work again.
NO_RETRY = {"x-should-retry": "false"}


def _submit_all(
    services: Services, tenant: str, bodies: Sequence[JobCreate], idempotency_key: str | None
) -> list[JobRecord]:
    records: list[JobRecord] = []
    try:
        for n, body in enumerate(bodies):
            key = idempotency_key
            if key and len(bodies) > 1:
                key = f"{key}:{n}"  # one key per job of the request
            records.append(jobs.submit(services, tenant, body, key))
    except Exception:
        # The answer will be an error, so nobody would ever collect the jobs made so far.
        for record in records:
            services.store.cancel(record.id)
        raise
    return records


async def run_jobs(
    services: Services,
    tenant: str,
    bodies: Sequence[JobCreate],
    idempotency_key: str | None = None,
) -> list[JobRecord]:
    """Submit the jobs, wait for all of them, and return them succeeded, or raise the API error
    that says what happened instead (504 still running, 409 canceled, 500 failed)."""
    records = await run_in_threadpool(_submit_all, services, tenant, bodies, idempotency_key)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + services.settings.sync_timeout_s
    for record in records:
        if not record.status.is_terminal:
            remaining = deadline - loop.time()
            if remaining > 0:
                await jobs.wait_until_finished(services.async_redis, record.id, remaining)
    done = [await run_in_threadpool(jobs.load, services, tenant, r.id) for r in records]
    _raise_unless_succeeded(done, services.settings.sync_timeout_s)
    return done


def _raise_unless_succeeded(records: list[JobRecord], timeout_s: float) -> None:
    pending = [r.id for r in records if not r.status.is_terminal]
    if pending:
        raise ApiError(
            504,
            "timeout",
            f"the images were not ready within {timeout_s:g}s; the jobs go on: poll "
            + ", ".join(f"GET /v1/jobs/{job_id}" for job_id in pending),
            details={"job_ids": [r.id for r in records], "pending": pending},
            headers=NO_RETRY,
        )
    bad = [r for r in records if r.status is not JobStatus.SUCCEEDED]
    if not bad:
        return
    details = {
        "job_ids": [r.id for r in records],
        "jobs": [
            {
                "id": r.id,
                "status": r.status.value,
                "error": r.error.model_dump() if r.error else None,
            }
            for r in bad
        ],
    }
    first = bad[0]
    if first.status is JobStatus.CANCELED:
        raise ApiError(
            409, "job_canceled", f"job {first.id} was canceled", details=details, headers=NO_RETRY
        )
    reason = f"{first.error.code}: {first.error.message}" if first.error else first.status.value
    raise ApiError(
        500,
        "generation_failed",
        f"job {first.id} ended {first.status.value}: {reason}",
        details=details,
        headers=NO_RETRY,
    )


def images_of(records: list[JobRecord]) -> list[ImageResult]:
    """Every image of the jobs, in job order, then image order."""
    return [image for record in records if record.result for image in record.result.images]


async def image_base64(services: Services, images: list[ImageResult]) -> list[str]:
    """The images' bytes from the bucket, base64-encoded."""

    def read() -> list[str]:
        return [base64.b64encode(services.storage.get(i.key)).decode("ascii") for i in images]

    return await run_in_threadpool(read)
