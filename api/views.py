"""Turns stored job records into what clients see."""

from __future__ import annotations

from datetime import UTC, datetime

from common.jobstore import JobRecord, JobStore
from common.schemas import JobPublic, JobStatus, Progress
from common.storage import Storage


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def job_links(job_id: str, *, webhook: bool = False) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    links = {"self": base, "cancel": f"{base}/cancel"}
    if webhook:
        links["webhooks"] = f"{base}/webhooks"
    return links


def job_public(record: JobRecord, store: JobStore, storage: Storage) -> JobPublic:
    """The job with presigned image URLs (fresh on every read) and its queue position."""
    result = record.result
    if result is not None and record.status is JobStatus.SUCCEEDED:
        images = []
        for image in result.images:
            url, expires_at = storage.presign(image.key)
            images.append(image.model_copy(update={"url": url, "expires_at": expires_at}))
        result = result.model_copy(update={"images": images})
    total = record.total_steps or record.request.num_inference_steps
    return JobPublic(
        id=record.id,
        status=record.status,
        created_at=_when(record.created_at),
        started_at=_when(record.started_at),
        finished_at=_when(record.finished_at),
        progress=Progress(
            step=record.step, total_steps=total, fraction=round(record.step / total, 4)
        ),
        queue_position=store.queue_position(record),
        request=record.request,
        metadata=record.request.metadata,
        expires_at=_when(record.deadline),
        batch_id=record.batch_id,
        webhook=record.webhook,
        result=result,
        error=record.error,
        attempts=record.attempts,
        worker=record.worker,
        timings=record.timings or {},
        links=job_links(record.id, webhook=record.webhook is not None),
    )
