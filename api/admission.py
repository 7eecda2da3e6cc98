"""What a request must pass before its job is stored and enqueued.

In order: size caps (422), content policy (400), queue-depth caps (429). Every way in that
creates jobs — ``/v1/jobs`` and whatever rides on :func:`api.jobs.submit` — calls
:func:`admit`, so a rejected request never reaches the queue.
"""

from __future__ import annotations

import redis

from api.errors import ApiError
from api.policy import ContentPolicy
from common import keys
from common.jobstore import JobStore
from common.schemas import JobRequest
from common.settings import Settings

# KEYS: tenant_queued.  ARGV: job key prefix.
# Drops the ids that left the queue (or expired) and counts the rest, in one round trip.
_COUNT_QUEUED = """
local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('HGET', ARGV[1] .. id, 'status') == 'queued' then
    n = n + 1
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return n
"""


def _too_big(field: str, message: str, limit: int) -> ApiError:
    return ApiError(
        422,
        "validation_error",
        f"{field}: {message}",
        details=[{"field": field, "message": message, "type": "limit", "limit": limit}],
    )


def check_size(request: JobRequest, settings: Settings) -> None:
    """Prompt length and count, image count and pixel budget, as configured (422)."""
    if len(request.prompt) > settings.max_prompts_per_job:
        raise _too_big(
            "prompt",
            f"at most {settings.max_prompts_per_job} prompts per job",
            settings.max_prompts_per_job,
        )
    for name, texts in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
        for index, text in enumerate(texts or []):
            if len(text) > settings.max_prompt_chars:
                raise _too_big(
                    f"{name}.{index}",
                    f"at most {settings.max_prompt_chars} characters",
                    settings.max_prompt_chars,
                )
    if request.num_images > settings.max_images_per_job:
        raise _too_big(
            "num_images_per_prompt",
            f"prompts x num_images_per_prompt is {request.num_images}; "
            f"at most {settings.max_images_per_job} images per job",
            settings.max_images_per_job,
        )
    pixels = request.num_images * request.width * request.height
    if pixels > settings.max_pixels_per_job:
        raise _too_big(
            "width",
            f"images x width x height is {pixels} pixels; "
            f"at most {settings.max_pixels_per_job} per job",
            settings.max_pixels_per_job,
        )


def queued_of_tenant(client: redis.Redis, tenant: str) -> int:
    """The tenant's queued jobs, exactly: drops the ids that left the queue. O(tracked ids)."""
    return int(client.eval(_COUNT_QUEUED, 1, keys.tenant_queued(tenant), keys.job("")))


def within_tenant_cap(client: redis.Redis, tenant: str, adding: int, cap: int) -> bool:
    """Whether ``adding`` more jobs keep the tenant within its cap.

    The tracked set only over-counts (ids that already left the queue linger until cleaned),
    so the exact count, which walks the set, is needed only when the cheap count says no:
    submissions stay O(1) while a tenant is below its cap.
    """
    if client.zcard(keys.tenant_queued(tenant)) + adding <= cap:
        return True
    return queued_of_tenant(client, tenant) + adding <= cap


def check_queue_depth(
    store: JobStore, settings: Settings, tenant: str, *, adding: int = 1, queue: str | None = None
) -> None:
    """429 with Retry-After when the tenant's or the whole queue's cap would be passed.

    The caps are checked, not reserved: concurrent submissions may pass a cap by the number
    of requests in flight at that moment.
    """
    retry = {"Retry-After": str(settings.queue_full_retry_after_s)}
    if not within_tenant_cap(store.redis, tenant, adding, settings.max_queued_per_tenant):
        raise ApiError(
            429,
            "tenant_queue_full",
            f"you have {settings.max_queued_per_tenant} jobs queued, the most allowed; "
            "retry when some have started",
            details={"limit": settings.max_queued_per_tenant},
            headers=retry,
        )
    if store.queue_depth(queue or settings.queue) + adding > settings.max_queued_total:
        raise ApiError(
            429,
            "queue_full",
            "the queue is full; retry later",
            details={"limit": settings.max_queued_total},
            headers=retry,
        )


def track_queued(store: JobStore, tenant: str, job_ids: list[str], ttl_s: int) -> None:
    """Count these jobs against the tenant's cap until they leave the queue."""
    pipe = store.redis.pipeline()
    pipe.zadd(keys.tenant_queued(tenant), dict.fromkeys(job_ids, 0))
    pipe.expire(keys.tenant_queued(tenant), ttl_s)
    pipe.execute()


def admit(
    store: JobStore,
    settings: Settings,
    policy: ContentPolicy,
    tenant: str,
    request: JobRequest,
) -> None:
    """Raise the API error that refuses ``request``, or return to let it in."""
    check_size(request, settings)
    policy.enforce(list(request.prompt), tenant)
    check_queue_depth(store, settings, tenant)
