"""Shared test helpers: bounded waits on observable conditions, and sdq processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from cli.services import Service, free_port, sdq_command, spawn, wait_for_port
from common import keys
from common.apikeys import ApiKeys

T = TypeVar("T")

TERMINAL = {"succeeded", "failed", "canceled", "expired"}


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.05,
    what: str = "",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail loudly after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or probe}")
        time.sleep(interval_s)


def wait_job(
    client: httpx.Client, job_id: str, statuses: set[str] = TERMINAL, timeout_s: float = 60.0
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        return job if job["status"] in statuses else None

    return wait_for(probe, timeout_s=timeout_s, what=f"job {job_id} in {statuses}")


def submit(client: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("width", 64)
    body.setdefault("height", 64)
    body.setdefault("num_inference_steps", 2)
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def live_workers(client: redis.Redis, node: str) -> list[dict[str, str]]:
    """Heartbeats of the worker processes of Celery node ``node`` (e.g. 'w1@host')."""
    names = [n for n in client.zrange(keys.workers(), 0, -1) if n.startswith(f"{node}:")]
    beats = [client.hgetall(keys.worker(n)) for n in names]
    return [b for b in beats if b]


def start_worker(
    env: dict[str, str], node: str, log_dir: Path, redis_client: redis.Redis
) -> Service:
    """A real ``sdq worker`` process; returns once its pipeline is loaded."""
    log_path = log_dir / f"{node}.log"
    proc = spawn(node, sdq_command("worker", "--hostname", node), log_path=log_path, env=env)
    service = Service(node, proc, log_path=log_path, extra={"node": node})

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker {node} exited; log:\n{log_path.read_text()[-3000:]}")
        return any(b.get("state") == "idle" for b in live_workers(redis_client, node))

    wait_for(ready, timeout_s=90, interval_s=0.1, what=f"worker {node} ready")
    return service


def start_api(env: dict[str, str], log_dir: Path) -> Service:
    port = free_port()
    log_path = log_dir / f"api-{port}.log"
    proc = spawn("api", sdq_command("api", "--port", str(port)), log_path=log_path, env=env)
    wait_for_port(port, timeout_s=60, proc=proc)
    return Service("api", proc, port, log_path, {"url": f"http://127.0.0.1:{port}"})


def child_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDQ_")}
    env.update(overrides)
    return env


def create_key_headers(client: redis.Redis, tenant: str = "tests", **limits: Any) -> dict[str, str]:
    """A new API key of ``tenant`` in that Redis, as the header that sends it."""
    key = ApiKeys(client).create(tenant, name="tests", **limits).key
    return {"Authorization": f"Bearer {key}"}
