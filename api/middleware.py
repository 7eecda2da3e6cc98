"""Pure ASGI middleware: the request body cap and the per-request log context.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses (Server-Sent Events) pass
through untouched and the request keeps running in one task.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from common.logs import log_context

log = logging.getLogger("sdq.access")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


class BodyLimitMiddleware:
    """413 for a body over the cap: at once from Content-Length, else when the bytes that
    actually arrive pass it (chunked uploads, or a Content-Length that lies)."""

    def __init__(self, app: ASGIApp, *, limit: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.larger = larger or {}  # path prefix -> its own cap (file uploads)

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.larger.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(413, "payload_too_large", BodyTooLarge(limit).detail)(
                scope, receive, send
            )
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPException from body reading; the app's handler
                    # answers 413 in the error shape.
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            # Reached here only if no handler inside answered (e.g. a raw ASGI route).
            if started:
                raise
            await error_response(413, "payload_too_large", exc.detail)(scope, receive, send)


class RequestContextMiddleware:
    """Gives each request its own log context (tenant and job id are bound inside), and
    writes one structured access line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with log_context() as context:
            try:
                await self.app(scope, receive, tracking_send)
            finally:
                self._log(scope, context, status, time.perf_counter() - start)

    @staticmethod
    def _log(scope: Scope, context: dict[str, Any], status: int, elapsed_s: float) -> None:
        # The router writes the matched path parameters into the (shared) scope.
        job_id = scope.get("path_params", {}).get("job_id")
        if job_id and "job_id" not in context:
            context["job_id"] = job_id
        log.info(
            "%s %s %d",
            scope["method"],
            scope["path"],
            status,
            extra={"status": status, "duration_ms": round(elapsed_s * 1000, 1)},
        )
