"""Request dependencies, as ``Annotated`` aliases that tests can override."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from common.jobstore import JobStore
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


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_tenant() -> str:
    """The tenant a request acts for."""
    return DEFAULT_TENANT


ServicesDep = Annotated[Services, Depends(get_services)]
TenantDep = Annotated[str, Depends(get_tenant)]
