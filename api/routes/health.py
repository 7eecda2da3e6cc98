"""Liveness, readiness and the worker fleet."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.deps import ServicesDep, get_tenant
from api.errors import RETRY_AFTER_UNAVAILABLE_S
from common import keys
from common.schemas import ComponentHealth, Readiness, WorkerList, WorkerPublic

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (it checks nothing else)."""
    return {"status": "ok"}


def _check(probe) -> ComponentHealth:
    try:
        probe()
    except Exception as exc:
        return ComponentHealth(ok=False, error=type(exc).__name__)
    return ComponentHealth(ok=True)


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when Redis and the bucket are reachable; 503 otherwise."""
    checks = {
        "redis": _check(services.store.redis.ping),
        "storage": _check(services.storage.check),
    }
    ready = all(c.ok for c in checks.values())
    body = Readiness(ready=ready, checks=checks).model_dump(mode="json")
    if ready:
        return JSONResponse(body)
    return JSONResponse(
        body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)}
    )


def _worker(raw: dict[str, str]) -> WorkerPublic:
    def opt_time(name: str) -> datetime | None:
        return datetime.fromtimestamp(float(raw[name]), UTC) if raw.get(name) else None

    return WorkerPublic(
        name=raw["name"],
        queue=raw.get("queue", ""),
        model=raw.get("model", ""),
        device=raw.get("device", ""),
        state=raw.get("state", "idle"),
        current_job=raw.get("current_job") or None,
        jobs_done=int(raw.get("jobs_done") or 0),
        pipeline_loads=int(raw.get("pipeline_loads") or 0),
        last_beat=opt_time("last_beat"),
        started_at=opt_time("started_at"),
        gpu_name=raw.get("gpu_name") or None,
        gpu_memory_total_mb=int(raw["gpu_memory_total_mb"])
        if raw.get("gpu_memory_total_mb")
        else None,
    )


# Worker names, hosts and GPUs are not for the whole internet: any valid API key may look.
@router.get(
    "/v1/workers",
    response_model=WorkerList,
    tags=["workers"],
    dependencies=[Depends(get_tenant)],
)
def list_workers(services: ServicesDep) -> WorkerList:
    """Live workers: model, device, idle/busy, current job, jobs done, last heartbeat."""
    client = services.store.redis
    names = client.zrange(keys.workers(), 0, -1)
    pipe = client.pipeline()
    for name in names:
        pipe.hgetall(keys.worker(name))
    live, gone = [], []
    for name, raw in zip(names, pipe.execute(), strict=True):
        (live if raw else gone).append(raw or name)
    if gone:  # their heartbeat keys expired: they missed several beats
        client.zrem(keys.workers(), *gone)
    return WorkerList(workers=sorted((_worker(raw) for raw in live), key=lambda w: w.name))
