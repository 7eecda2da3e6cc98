"""``/v1/jobs``: submit, read, list and cancel text-to-image jobs."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import jobs
from api.deps import ServicesDep, TenantDep
from api.errors import ApiError
from api.views import job_public
from common.schemas import ErrorResponse, JobCreate, JobList, JobPublic, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked API key"},
    404: {"model": ErrorResponse, "description": "No such job"},
    422: {"model": ErrorResponse, "description": "Invalid request"},
    429: {"model": ErrorResponse, "description": "Rate limited or queue full (Retry-After)"},
    503: {"model": ErrorResponse, "description": "Redis or storage unavailable"},
}


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, not {content_type or 'missing'!r}",
        )


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    dependencies=[Depends(require_json)],
    responses={200: {"model": JobPublic, "description": "Finished within Prefer: wait"}, **_ERRORS},
)
async def create_job(
    body: JobCreate,
    services: ServicesDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    prefer: Annotated[str | None, Header(description="wait=N: hold up to N seconds")] = None,
    cancel_after: Annotated[
        str | None, Header(description="expire the job if it has not started within 30s, 5m, ...")
    ] = None,
) -> JSONResponse:
    """Submit a job. 202 with the queued job; 200 if it finished within ``Prefer: wait``."""
    cancel_after_s = jobs.parse_cancel_after(cancel_after)
    record = await run_in_threadpool(
        partial(jobs.submit, cancel_after_s=cancel_after_s),
        services,
        tenant,
        body,
        idempotency_key,
    )
    wait_s = jobs.parse_prefer_wait(prefer, services.settings.max_wait_s)
    if wait_s and not record.status.is_terminal:
        await jobs.wait_until_finished(services.async_redis, record.id, wait_s)
        record = await run_in_threadpool(jobs.load, services, tenant, record.id)
    job = await run_in_threadpool(job_public, record, services.store, services.storage)
    return JSONResponse(
        job.model_dump(mode="json"),
        status_code=200 if job.status.is_terminal else 202,
        headers={"Location": job.links["self"]},
    )


@router.get("", response_model=JobList, responses=_ERRORS)
def list_jobs(
    services: ServicesDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,19}$")] = None,
) -> JobList:
    """Your jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    records, next_seq = services.store.list(
        tenant=tenant, status=status, cursor=int(cursor) if cursor else None, limit=limit
    )
    return JobList(
        jobs=[job_public(r, services.store, services.storage) for r in records],
        next_cursor=str(next_seq) if next_seq is not None else None,
    )


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
def get_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> JobPublic:
    """A job: status, progress, queue position, images (presigned URLs), errors, timings."""
    return job_public(jobs.load(services, tenant, job_id), services.store, services.storage)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={409: {"model": ErrorResponse, "description": "Already finished"}, **_ERRORS},
)
def cancel_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> JobPublic:
    """Cancel a job: a queued one at once, a running one within a denoising step or two."""
    return job_public(jobs.cancel(services, tenant, job_id), services.store, services.storage)
