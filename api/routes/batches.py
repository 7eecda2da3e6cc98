"""``/v1/batches``: many prompts at once, from JSON or a CSV/JSONL file, with a results manifest."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Header, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import batches
from api.batches import BatchCreate, BatchParameters, BatchPublic, RawRow
from api.deps import Services, ServicesDep, TenantDep
from api.routes.jobs import require_json
from common.schemas import ErrorResponse, WebhookSpec

router = APIRouter(prefix="/v1/batches", tags=["batches"])

_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked API key"},
    404: {"model": ErrorResponse, "description": "No such batch"},
    413: {"model": ErrorResponse, "description": "More than 10,000 rows, or too many bytes"},
    422: {"model": ErrorResponse, "description": "A bad row (its number is in the message)"},
    429: {"model": ErrorResponse, "description": "Rate limited or the batch queue is full"},
    503: {"model": ErrorResponse, "description": "Redis or storage unavailable"},
}

IdempotencyKey = Annotated[
    str | None, Header(max_length=255, description="Same key + same rows: the same batch")
]


def _create(
    services: Services,
    tenant: str,
    rows: list[RawRow],
    shared: BatchParameters,
    metadata: dict[str, str],
    idempotency_key: str | None,
    webhook: WebhookSpec | None = None,
) -> JSONResponse:
    bodies = batches.build_jobs(rows, shared)
    record = batches.submit(services, tenant, bodies, metadata, idempotency_key, webhook)
    batch = batches.view(services, record)
    return JSONResponse(
        batch.model_dump(mode="json"), status_code=202, headers={"Location": batch.links["self"]}
    )


@router.post(
    "",
    status_code=202,
    response_model=BatchPublic,
    dependencies=[Depends(require_json)],
    responses=_ERRORS,
)
async def create_batch(
    body: BatchCreate,
    services: ServicesDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Create a batch from a JSON list of prompts: one job per row, on the batch queue."""
    rows = batches.json_rows(body.prompts)
    return await run_in_threadpool(
        _create,
        services,
        tenant,
        rows,
        body.parameters,
        body.metadata,
        idempotency_key,
        body.webhook,
    )


@router.post("/upload", status_code=202, response_model=BatchPublic, responses=_ERRORS)
async def upload_batch(
    services: ServicesDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File(description="CSV with a 'prompt' column, or JSON Lines")],
    parameters: Annotated[str | None, Form(description="JSON object: shared parameters")] = None,
    metadata: Annotated[str | None, Form(description="JSON object: string metadata")] = None,
    webhook: Annotated[
        str | None, Form(description='JSON object: {"url": ..., "events": ["batch.completed"]}')
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Create a batch from an uploaded CSV or JSONL file of prompts."""
    options = batches.upload_options(parameters, metadata, webhook)
    data = await file.read()
    rows = await run_in_threadpool(batches.file_rows, data, file.filename, file.content_type)
    return await run_in_threadpool(
        _create,
        services,
        tenant,
        rows,
        options.parameters,
        options.metadata,
        idempotency_key,
        options.webhook,
    )


@router.get("/{batch_id}", response_model=BatchPublic, responses=_ERRORS)
def get_batch(batch_id: str, services: ServicesDep, tenant: TenantDep) -> BatchPublic:
    """A batch: jobs per status, fraction done, times, and its results manifest once done."""
    return batches.view(services, batches.load(services, tenant, batch_id))


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchPublic,
    responses={409: {"model": ErrorResponse, "description": "Already finished"}, **_ERRORS},
)
def cancel_batch(batch_id: str, services: ServicesDep, tenant: TenantDep) -> BatchPublic:
    """Cancel a batch: its queued jobs at once, its running ones within a step or two."""
    return batches.view(services, batches.cancel(services, tenant, batch_id))
