"""The FastAPI application: ``uvicorn --factory api.main:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from api.deps import Services
from api.errors import document_errors, install_error_handlers
from api.metrics import HttpMetricsMiddleware
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api.routes import batches, events, health, images, jobs, metrics, score, webhooks
from api.routes.web import install_web
from common.jobstore import JobStore
from common.queue import JobQueue, make_celery
from common.settings import Settings, get_settings
from common.storage import Storage

log = logging.getLogger(__name__)


def build_services(settings: Settings) -> Services:
    store = JobStore.from_url(
        settings.redis_url,
        job_ttl_s=settings.job_ttl_s,
        idempotency_ttl_s=settings.idempotency_ttl_s,
    )
    return Services(
        settings=settings,
        store=store,
        storage=Storage(settings),
        queue=JobQueue(make_celery(settings)),
        # Event streams and waits block on XREAD for up to KEEPALIVE_S (15 s): the socket
        # timeout must outlast the longest block, or an idle stream reads as Redis being down.
        async_redis=aioredis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=30,
            socket_connect_timeout=5,
            health_check_interval=30,
        ),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        if settings.s3_create_bucket:
            services.storage.ensure_bucket()
        app.state.services = services
        yield
        await services.async_redis.aclose()
        services.store.redis.close()

    app = FastAPI(
        title="sdq",
        version="1",
        summary="Stable Diffusion v1.5 text-to-image as a queue-based service",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    document_errors(app)
    app.add_middleware(HttpMetricsMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_body_bytes,
        larger={"/v1/batches": settings.max_upload_bytes},  # CSV/JSONL uploads
    )
    app.add_middleware(RequestContextMiddleware)  # outermost: its log line sees every answer
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(webhooks.router)
    app.include_router(score.router)
    app.include_router(images.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    install_web(app)
    return app
