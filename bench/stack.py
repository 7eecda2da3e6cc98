"""A whole sdq on this machine for benchmarks: its own redis-server, rclone S3 server, worker
processes and API process on free loopback ports, torn down by ``stop()``."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import redis

from cli.services import (
    DEV_S3_KEY,
    DEV_S3_SECRET,
    Service,
    free_port,
    sdq_command,
    spawn,
    start_redis,
    start_s3,
    wait_for_port,
)
from common import keys
from common.settings import Settings

# Benchmarks measure the service, not its guards: no auth, no rate limits, no queue caps.
BENCH_ENV = {
    "SDQ_ENV": "dev",
    "SDQ_AUTH_ENABLED": "false",
    "SDQ_RATE_LIMIT_PER_S": "1000000",
    "SDQ_RATE_LIMIT_BURST": "1000000",
    "SDQ_MAX_QUEUED_PER_TENANT": "100000000",
    "SDQ_MAX_QUEUED_TOTAL": "100000000",
    "SDQ_S3_BUCKET": "bench",
    "SDQ_S3_CREATE_BUCKET": "true",
    "SDQ_LOG_LEVEL": "WARNING",
}


class LocalStack:
    def __init__(self, workers: int = 1, api: bool = True, **env: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sdq-bench-"))
        self.redis = start_redis(self.root / "redis")
        self.s3 = start_s3(self.root / "s3")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SDQ_")}
        self.env.update(
            BENCH_ENV,
            SDQ_REDIS_URL=self.redis.extra["url"],
            SDQ_S3_ENDPOINT_URL=self.s3.extra["url"],
            SDQ_S3_ACCESS_KEY_ID=DEV_S3_KEY,
            SDQ_S3_SECRET_ACCESS_KEY=DEV_S3_SECRET,
            SDQ_CACHE_DIR=str(self.root / "cache"),
            **env,
        )
        self.client = redis.Redis.from_url(self.redis.extra["url"], decode_responses=True)
        self.workers = [self.start_worker(n) for n in range(workers)]
        self.api: Service | None = self.start_api() if api else None

    @property
    def settings(self) -> Settings:
        values = {k[4:].lower(): v for k, v in self.env.items() if k.startswith("SDQ_")}
        return Settings(**values)

    @property
    def url(self) -> str:
        assert self.api is not None
        return f"http://127.0.0.1:{self.api.port}"

    def start_worker(self, n: int) -> Service:
        log = self.root / "logs" / f"worker{n}.log"
        command = sdq_command("worker", "--hostname", f"bench{n}@%h")
        return Service(
            f"worker{n}", spawn("worker", command, log_path=log, env=self.env), log_path=log
        )

    def start_api(self) -> Service:
        port = free_port()
        log = self.root / "logs" / "api.log"
        proc = spawn("api", sdq_command("api", "--port", str(port)), log_path=log, env=self.env)
        wait_for_port(port, timeout_s=60, proc=proc)
        return Service("api", proc, port, log)

    def wait_workers(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            names = self.client.zrange(keys.workers(), 0, -1)
            beats = [self.client.hgetall(keys.worker(n)) for n in names]
            if sum(b.get("state") == "idle" for b in beats) >= len(self.workers):
                return
            time.sleep(0.2)
        raise TimeoutError("workers did not load in time")

    def restart_redis(self) -> None:
        self.redis.stop()
        self.redis = start_redis(self.root / "redis", port=self.redis.port)

    def stop(self) -> None:
        services = [self.api, *self.workers, self.s3, self.redis]
        for service in services:
            if service is not None:
                service.stop()
        self.client.close()
