"""``/metrics``: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import ServicesDep
from api.metrics import exposition

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics: this API process's counters and the fleet's queues and workers."""
    return Response(exposition(services), media_type=CONTENT_TYPE_LATEST)
