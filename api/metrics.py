"""The API's Prometheus endpoint: its own counters, HTTP traffic, and fleet gauges from Redis.

The fleet gauges (queue depth, oldest queued job, workers by state) are read from Redis when
Prometheus scrapes, so every API replica reports the same values: aggregate them with ``max``,
not ``sum``. Counters are per process: aggregate them with ``sum``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import Services
from common import keys

HTTP_REQUESTS = Counter(
    "sdq_http_requests", "HTTP requests answered, by route template", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "sdq_http_request_seconds",
    "Time to the response headers (a stream's length is not counted)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class FleetCollector:
    """Gauges about the whole service, read from Redis at scrape time."""

    def __init__(self, client: redis.Redis, default_queue: str) -> None:
        self._redis = client
        self._default_queue = default_queue

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("sdq_redis_up", "1 when the API reached Redis for this scrape")
        try:
            families = [*self._queues(), self._workers()]
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _queues(self) -> Iterator[Metric]:
        names = sorted(set(self._redis.smembers(keys.queues())) | {self._default_queue})
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)  # Celery's Redis transport keeps a queue's messages in this list
            pipe.zcard(keys.pending(name))
            pipe.zrange(keys.pending(name), 0, 0)
        answers = pipe.execute()
        depth = GaugeMetricFamily(
            "sdq_queue_depth",
            "Messages waiting in the broker list of the queue (what KEDA scales on)",
            labels=["queue"],
        )
        queued = GaugeMetricFamily(
            "sdq_jobs_queued",
            "Jobs in status queued (includes one a worker has taken but not started)",
            labels=["queue"],
        )
        oldest = GaugeMetricFamily(
            "sdq_queue_oldest_job_age_seconds",
            "Age of the oldest queued job (0 when none)",
            labels=["queue"],
        )
        now = time.time()
        for n, name in enumerate(names):
            llen, zcard, first = answers[3 * n : 3 * n + 3]
            depth.add_metric([name], llen)
            queued.add_metric([name], zcard)
            created = self._redis.hget(keys.job(first[0]), "created_at") if first else None
            oldest.add_metric([name], max(0.0, now - float(created)) if created else 0.0)
        yield from (depth, queued, oldest)

    def _workers(self) -> Metric:
        family = GaugeMetricFamily(
            "sdq_workers",
            "Live worker processes (heartbeat younger than a few intervals) by state",
            labels=["state"],
        )
        names = self._redis.zrange(keys.workers(), 0, -1)
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hget(keys.worker(name), "state")
        counts = {"loading": 0, "idle": 0, "busy": 0}
        for state in pipe.execute():
            if state in counts:  # None: its heartbeat expired
                counts[state] += 1
        for state, count in counts.items():
            family.add_metric([state], count)
        return family


def exposition(services: Services) -> bytes:
    """This process's metrics followed by the fleet gauges, in Prometheus text format."""
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(FleetCollector(services.store.redis, services.settings.queue))
    return generate_latest(REGISTRY) + generate_latest(fleet)


class HttpMetricsMiddleware:
    """Counts requests by route template (never the raw path: ids would explode the labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_count(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                HTTP_LATENCY.labels(scope["method"], _route(scope)).observe(
                    time.perf_counter() - started
                )
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            HTTP_REQUESTS.labels(scope["method"], _route(scope), str(status)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
