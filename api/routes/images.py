"""``POST /v1/images/generations``: OpenAI's Images API, served from the queue."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse

from api import sync
from api.deps import ServicesDep, TenantDep
from api.images import ImageData, ImageGenerate, ImagesResponse
from api.routes.jobs import require_json
from common.schemas import ErrorResponse

router = APIRouter(prefix="/v1/images", tags=["openai compatible"])

_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked API key"},
    409: {"model": ErrorResponse, "description": "The job was canceled meanwhile"},
    422: {"model": ErrorResponse, "description": "Invalid request; nothing was queued"},
    429: {"model": ErrorResponse, "description": "Rate limited or queue full (Retry-After)"},
    500: {"model": ErrorResponse, "description": "Generation failed"},
    503: {"model": ErrorResponse, "description": "Redis or storage unavailable"},
    504: {"model": ErrorResponse, "description": "Not ready in SDQ_SYNC_TIMEOUT_S; the job id"},
}


@router.post(
    "/generations",
    response_model=ImagesResponse,
    dependencies=[Depends(require_json)],
    responses=_ERRORS,
)
async def generate_images(
    body: ImageGenerate,
    services: ServicesDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    """Generate ``n`` images of a prompt and wait for them (OpenAI's request and answer)."""
    (record,) = await sync.run_jobs(services, tenant, [body.job()], idempotency_key)
    images = sync.images_of([record])
    if body.response_format == "b64_json":
        data = [ImageData(b64_json=b64) for b64 in await sync.image_base64(services, images)]
    else:
        data = [ImageData(url=services.storage.presign(image.key)[0]) for image in images]
    answer = ImagesResponse(
        created=int(record.finished_at or time.time()),
        data=data,
        size=body.size,
        output_format=body.output_format,
    )
    return JSONResponse(
        answer.model_dump(mode="json", exclude_none=True),
        headers={"X-Sdq-Job-Id": record.id, "Link": f'</v1/jobs/{record.id}>; rel="related"'},
    )
