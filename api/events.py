"""A job's Server-Sent Events, read from its Redis event stream.

Each entry of the stream becomes one event whose SSE ``id`` is the stream entry id, so a client
that reconnects with ``Last-Event-ID`` resumes right after the last event it saw. Events:

- ``status``: ``{"status": "running", "attempt": 1}`` on every transition,
- ``progress``: ``{"step": 3, "total_steps": 25, "fraction": 0.12}`` (throttled by the worker),
- ``job``: the whole job, as ``GET /v1/jobs/{id}`` returns it, once it has ended; then the
  stream closes. A client that resumes after the end gets the ``job`` event again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis
from starlette.concurrency import run_in_threadpool

from api import jobs
from api.deps import Services
from api.errors import ApiError
from api.views import job_public
from common import keys
from common.schemas import JobStatus

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
RETRY_MS = 2000  # how long a browser waits before it reconnects
_BATCH = 100


def format_event(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    """One SSE message (the JSON is a single line, so one ``data:`` field suffices)."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def entry_event(fields: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The SSE event name and payload of one stream entry."""
    kind = fields.get("type", "status")
    if kind == "progress":
        step, total = int(fields.get("step", 0)), int(fields.get("total_steps", 0))
        fraction = round(step / total, 4) if total else 0.0
        return "progress", {"step": step, "total_steps": total, "fraction": fraction}
    data: dict[str, Any] = {k: v for k, v in fields.items() if k != "type"}
    if "attempt" in data:
        data["attempt"] = int(data["attempt"])
    return kind, data


def _is_end(event: str, data: dict[str, Any]) -> bool:
    return event == "status" and JobStatus(data["status"]).is_terminal


async def _final(services: Services, tenant: str, job_id: str, event_id: str) -> str:
    def read() -> dict[str, Any]:
        record = jobs.load(services, tenant, job_id)
        return job_public(record, services.store, services.storage).model_dump(mode="json")

    return format_event("job", await run_in_threadpool(read), event_id)


async def job_event_stream(
    services: Services, tenant: str, job_id: str, last_event_id: str | None
) -> AsyncIterator[str]:
    """Replay the job's events after ``last_event_id``, follow new ones, end with the job."""
    client, stream = services.async_redis, keys.job_events(job_id)
    last, block_ms = last_event_id or "0", None  # the first read only drains what is there
    ending = False
    yield f"retry: {RETRY_MS}\n\n"
    try:
        while True:
            answer = await client.xread({stream: last}, block=block_ms, count=_BATCH)
            entries = answer[0][1] if answer else []
            for entry_id, fields in entries:
                last = entry_id
                event, data = entry_event(fields)
                yield format_event(event, data, entry_id)
                if _is_end(event, data):
                    yield await _final(services, tenant, job_id, entry_id)
                    return
            if entries:
                block_ms = int(KEEPALIVE_S * 1000)
                continue
            if ending:  # ended without a terminal event after ``last``: resumed, or trimmed
                yield await _final(services, tenant, job_id, last if last != "0" else "")
                return
            record = await run_in_threadpool(jobs.load, services, tenant, job_id)
            if record.status.is_terminal:
                ending, block_ms = True, None  # drain what it wrote just now, then end
                continue
            if block_ms is not None:
                yield ": keepalive\n\n"
            block_ms = int(KEEPALIVE_S * 1000)
    except ApiError as exc:  # the job expired while it was being watched
        yield format_event("error", {"code": exc.code, "message": exc.message})
    except redis.RedisError as exc:
        log.warning("event stream of job %s: %s", job_id, exc)
        yield format_event("error", {"code": "unavailable", "message": "Redis is unavailable"})
