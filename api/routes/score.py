"""``POST /score``: the seed's real-time interface (prompts in, base64 PNGs out)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from api import score, sync
from api.deps import ServicesDep, TenantDep
from api.score import ScoreOutput, ScoreRequest
from common.schemas import ErrorResponse

router = APIRouter(tags=["seed interface"])

_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked API key"},
    409: {"model": ErrorResponse, "description": "A job was canceled meanwhile"},
    413: {"model": ErrorResponse, "description": "Too many rows (use /v1/batches)"},
    422: {"model": ErrorResponse, "description": "Malformed input; nothing was queued"},
    429: {"model": ErrorResponse, "description": "Rate limited or queue full (Retry-After)"},
    500: {"model": ErrorResponse, "description": "Generation failed"},
    503: {"model": ErrorResponse, "description": "Redis or storage unavailable"},
    504: {"model": ErrorResponse, "description": "Not ready in SDQ_SYNC_TIMEOUT_S; job ids"},
}


@router.post("/score", response_model=list[ScoreOutput], responses=_ERRORS)
async def score_prompts(
    body: ScoreRequest,
    services: ServicesDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> list[ScoreOutput]:
    """Generate one image per prompt and wait for them: base64 PNGs and NSFW flags, in order."""
    bodies = score.job_bodies(body, services.settings)
    records = await sync.run_jobs(services, tenant, bodies, idempotency_key)
    images = sync.images_of(records)
    encoded = await sync.image_base64(services, images)
    return score.output(encoded, [image.nsfw_content_detected for image in images])
