"""``/v1/jobs/{id}/events``: a job's progress as Server-Sent Events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import jobs
from api.deps import ServicesDep, TenantDep
from api.events import job_event_stream
from common.schemas import ErrorResponse

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_STREAM = {"description": "Server-Sent Events", "content": {"text/event-stream": {}}}


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: _STREAM,
        404: {"model": ErrorResponse, "description": "No such job"},
        422: {"model": ErrorResponse, "description": "Invalid Last-Event-ID"},
    },
)
async def job_events(
    job_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header(pattern=r"^\d{1,20}-\d{1,20}$")] = None,
) -> StreamingResponse:
    """Stream ``status`` and ``progress`` events, then the finished ``job``; resumable."""
    await run_in_threadpool(jobs.load, services, tenant, job_id)  # 404 before the stream opens
    return StreamingResponse(
        job_event_stream(services, tenant, job_id, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
