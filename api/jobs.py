"""Job operations behind the routes: plain functions that are easy to test."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import redis.asyncio as aioredis

from api import admission, webhooks
from api.deps import Services
from api.errors import ApiError
from common import keys, metrics
from common.jobstore import IdempotencyConflict, JobNotFound, JobRecord, fingerprint
from common.logs import bind, prompt_summary
from common.schemas import JobCreate, JobStatus

log = logging.getLogger(__name__)

WAIT_SLICE_S = 2.0  # longest single blocking read while waiting for a job


def submit(
    services: Services,
    tenant: str,
    body: JobCreate,
    idempotency_key: str | None,
    *,
    cancel_after_s: float | None = None,
) -> JobRecord:
    """Admit, store, then put it on the queue. Nothing is stored that was not enqueued."""
    settings, store = services.settings, services.store
    request = body.normalised()
    admission.admit(store, settings, services.content_policy, tenant, request)
    webhooks.check(services, tenant, body.webhook)
    try:
        job_id, created = store.create(
            request,
            tenant=tenant,
            queue=settings.queue,
            idempotency_key=idempotency_key,
            body_fingerprint=fingerprint(body.model_dump(mode="json")),
            deadline=start_deadline(body, cancel_after_s),
            webhook=body.webhook,
        )
    except IdempotencyConflict as exc:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request body",
            details={"job_id": str(exc)},
        ) from exc
    if created:
        try:
            services.queue.enqueue(job_id, settings.queue)
            store.mark_dispatched([job_id])
        except Exception:
            store.discard(job_id, tenant=tenant, idempotency_key=idempotency_key)
            raise
        admission.track_queued(store, tenant, [job_id], settings.job_ttl_s)
        metrics.JOBS_SUBMITTED.labels(queue=settings.queue).inc()
        bind(job_id=job_id)
        log.info(
            "job %s queued on %s",
            job_id,
            settings.queue,
            extra={"prompts": prompt_summary(request.prompt, settings)},
        )
    return store.get(job_id)


def start_deadline(body: JobCreate, cancel_after_s: float | None) -> float | None:
    """The epoch time the job must start by: the earlier of expires_at and Cancel-After."""
    candidates = []
    if body.expires_at is not None:
        candidates.append(body.expires_at.timestamp())
    if cancel_after_s is not None:
        candidates.append(time.time() + cancel_after_s)
    if not candidates:
        return None
    deadline = min(candidates)
    if deadline <= time.time():
        raise ApiError(422, "validation_error", "expires_at: the deadline is already past")
    return deadline


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_cancel_after(header: str | None) -> float | None:
    """``Cancel-After: 90`` or ``90s``, ``5m``, ``1h``, ``500ms``: seconds, or None if absent."""
    if header is None:
        return None
    match = _DURATION.match(header)
    if not match or float(match.group(1)) <= 0:
        raise ApiError(
            422,
            "validation_error",
            f"Cancel-After: expected a positive duration like 30s, 5m or 1h, got {header!r}",
        )
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def load(services: Services, tenant: str, job_id: str) -> JobRecord:
    try:
        return services.store.get(job_id, tenant=tenant)
    except JobNotFound as exc:
        raise ApiError(404, "job_not_found", f"no job with id {job_id!r}") from exc


def cancel(services: Services, tenant: str, job_id: str) -> JobRecord:
    record = load(services, tenant, job_id)
    outcome = services.store.cancel(record.id)
    if outcome == "canceled":  # it never reached a worker, which would have counted it
        metrics.job_finished(record.queue, JobStatus.CANCELED)
    if outcome in {"canceled", "requested", JobStatus.CANCELED.value}:
        return services.store.get(job_id)
    if outcome == "missing":
        raise ApiError(404, "job_not_found", f"no job with id {job_id!r}")
    raise ApiError(409, "job_finished", f"the job already ended: {outcome}")


def parse_prefer_wait(header: str | None, cap_s: float) -> float:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), capped; 0 when absent or bad."""
    if not header:
        return 0.0
    for preference in header.split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return max(0.0, min(float(value.strip().strip('"')), cap_s))
            except ValueError:
                return 0.0
    return 0.0


async def wait_until_finished(client: aioredis.Redis, job_id: str, timeout_s: float) -> bool:
    """Wait on the job's event stream for a terminal status; True if it came in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    stream, last_id = keys.job_events(job_id), "0"
    while (remaining := deadline - loop.time()) > 0:
        # Short blocks: one long XREAD BLOCK outlives the client's socket timeout (redis-py's
        # asyncio client reads with a 5 s timeout), which would turn a long wait into a 503.
        block_ms = max(1, int(min(remaining, WAIT_SLICE_S) * 1000))
        answer = await client.xread({stream: last_id}, block=block_ms, count=100)
        if not answer:
            continue
        for entry_id, fields in answer[0][1]:
            last_id = entry_id
            if fields.get("type") == "status" and JobStatus(fields["status"]).is_terminal:
                return True
    return False
