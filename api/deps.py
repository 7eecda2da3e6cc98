"""Request dependencies, as ``Annotated`` aliases that tests can override."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.policy import ContentPolicy
from api.ratelimit import RateLimiter
from common.apikeys import ApiKeys
from common.jobstore import JobStore
from common.logs import bind
from common.queue import JobQueue
from common.settings import Settings
from common.storage import Storage

DEFAULT_TENANT = "default"


@dataclass
class Services:
    """What the app builds once at start-up and every request shares."""

    settings: Settings
    store: JobStore
    storage: Storage
    queue: JobQueue
    async_redis: aioredis.Redis  # for waits that must not hold a thread
    # Built from the fields above, so whoever constructs Services need not know about them.
    api_keys: ApiKeys = field(init=False)
    rate_limiter: RateLimiter = field(init=False)
    content_policy: ContentPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.api_keys = ApiKeys(self.store.redis)
        self.rate_limiter = RateLimiter(self.store.redis)
        self.content_policy = ContentPolicy.from_settings(self.settings)


def get_services(request: Request) -> Services:
    return request.app.state.services


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An sdq API key (`sdq keys create --tenant NAME`): `Authorization: Bearer <key>`",
)


def get_tenant(
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The tenant a request acts for: the owner of its API key, after its rate limit.

    With ``SDQ_AUTH_ENABLED=false`` (local development only) every request is ``default``.
    """
    settings = services.settings
    if not settings.auth_enabled:
        bind(tenant=DEFAULT_TENANT)
        return DEFAULT_TENANT
    if credentials is None:
        raise ApiError(
            401,
            "unauthorized",
            "send an API key: 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = services.api_keys.authenticate(credentials.credentials)
    if key is None:
        raise ApiError(
            401,
            "invalid_api_key",
            "the API key is not valid (unknown, malformed or revoked)",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    bind(tenant=key.tenant, key_id=key.id)
    verdict = services.rate_limiter.take(
        key.id,
        rate_per_s=key.rate_per_s or settings.rate_limit_per_s,
        burst=key.burst or settings.rate_limit_burst,
    )
    if not verdict.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests for this API key; retry in {verdict.retry_after_s}s",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )
    return key.tenant


ServicesDep = Annotated[Services, Depends(get_services)]
TenantDep = Annotated[str, Depends(get_tenant)]
