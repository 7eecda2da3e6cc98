"""Operating sdq: Prometheus metrics on the API and a worker, the worker liveness check, and the
fleet view dropping a dead worker. One extra worker (node ops@sdq-test, queue sdq.ops, a model
whose safety checker flags everything) and an API on the same queue serve this module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from cli.services import Service, free_port, sdq_command
from common import keys
from common.settings import Settings
from common.storage import Storage
from tests.helpers import live_workers, start_api, start_worker, submit, wait_for, wait_job

pytestmark = pytest.mark.integration

NODE = "ops@sdq-test"
QUEUE = "sdq.ops"


@dataclass
class Ops:
    worker: Service
    api: httpx.Client
    metrics_url: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def ops(
    sdq_env: dict[str, str],
    logs: Path,
    redis_client: redis.Redis,
    storage: Storage,
    model_cache: Path,
    auth_headers: dict[str, str],
) -> Iterator[Ops]:
    from worker.tiny import ensure_tiny_model

    port = free_port()
    env = {
        **sdq_env,
        "SDQ_QUEUE": QUEUE,
        "SDQ_WORKER_METRICS_PORT": str(port),
        "SDQ_MODEL": str(ensure_tiny_model(model_cache, flag_all=True)),
    }
    worker = start_worker(env, NODE, logs, redis_client)
    api = start_api(env, logs)
    try:
        with httpx.Client(base_url=api.extra["url"], timeout=30, headers=auth_headers) as http:
            yield Ops(worker, http, f"http://127.0.0.1:{port}/metrics", env)
    finally:
        api.stop()
        worker.stop()


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_and_histograms_move_after_a_job(ops: Ops) -> None:
    api_url = str(ops.api.base_url.join("/metrics"))
    api_before, worker_before = scrape(api_url), scrape(ops.metrics_url)

    job = wait_job(ops.api, submit(ops.api, prompt=["one", "two"])["id"])

    assert job["status"] == "succeeded"
    assert job["result"]["nsfw_content_detected"] == [True, True]

    def moved(before: dict, after: dict, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    api_after = wait_for(
        lambda: (s := scrape(api_url)) and value(s, "sdq_workers", state="idle") >= 1 and s,
        what="the worker idle again",
    )
    # The worker counts the job where it records the outcome, which the API may see first.
    finished = {"queue": QUEUE, "status": "succeeded"}
    worker_after = wait_for(
        lambda: (
            (s := scrape(ops.metrics_url))
            and moved(worker_before, s, "sdq_jobs_finished_total", **finished)
            and s
        ),
        what="the job counted by the worker",
    )

    assert moved(api_before, api_after, "sdq_jobs_submitted_total", queue=QUEUE) == 1
    post = {"method": "POST", "route": "/v1/jobs", "status": "202"}
    assert moved(api_before, api_after, "sdq_http_requests_total", **post) == 1
    assert value(api_after, "sdq_redis_up") == 1
    assert ("sdq_queue_depth", frozenset({("queue", QUEUE)})) in api_after

    w0, w1 = worker_before, worker_after
    assert moved(w0, w1, "sdq_jobs_finished_total", queue=QUEUE, status="succeeded") == 1
    assert moved(w0, w1, "sdq_images_generated_total", queue=QUEUE) == 2
    assert moved(w0, w1, "sdq_nsfw_flagged_total", queue=QUEUE) == 2
    for histogram in ("queue_wait", "inference", "upload"):
        assert moved(w0, w1, f"sdq_job_{histogram}_seconds_count", queue=QUEUE) == 1
    total = {"queue": QUEUE, "status": "succeeded"}
    assert moved(w0, w1, "sdq_job_total_seconds_count", **total) == 1
    assert moved(w0, w1, "sdq_job_total_seconds_sum", **total) == pytest.approx(
        job["timings"]["total_s"], abs=0.01
    )
    assert value(w1, "sdq_worker_ready") == 1
    assert value(w1, "sdq_worker_busy") == 0


def test_queue_depth_and_cancels_are_reported(
    settings: Settings, auth_headers: dict[str, str]
) -> None:
    idle_queue = "sdq.metrics-unconsumed"  # no worker consumes it: the jobs stay queued
    app = create_app(settings.model_copy(update={"queue": idle_queue}))
    with TestClient(app, headers=auth_headers) as http:
        before = scrape_app(http)
        first, second = submit(http, prompt="waits"), submit(http, prompt="waits too")
        during = scrape_app(http)
        http.post(f"/v1/jobs/{first['id']}/cancel").raise_for_status()
        http.post(f"/v1/jobs/{second['id']}/cancel").raise_for_status()
        after = scrape_app(http)

    assert value(during, "sdq_queue_depth", queue=idle_queue) == 2  # Celery's list
    assert value(during, "sdq_jobs_queued", queue=idle_queue) == 2  # the job store
    assert value(during, "sdq_queue_oldest_job_age_seconds", queue=idle_queue) > 0
    assert value(after, "sdq_jobs_queued", queue=idle_queue) == 0
    canceled = {"queue": idle_queue, "status": "canceled"}
    assert (
        value(after, "sdq_jobs_finished_total", **canceled)
        - value(before, "sdq_jobs_finished_total", **canceled)
        == 2
    )


def scrape_app(http: TestClient) -> dict[tuple[str, frozenset], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_workers_register_their_queues(ops: Ops, client: httpx.Client) -> None:
    # The session API serves sdq.jobs; it learns of sdq.ops from the ops worker.
    samples = scrape(str(client.base_url.join("/metrics")))
    assert ("sdq_queue_depth", frozenset({("queue", QUEUE)})) in samples


def worker_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        sdq_command("worker-check", *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_worker_check_passes_for_a_consuming_worker(ops: Ops) -> None:
    done = worker_check(ops.env, "--node", NODE, "--ready")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok: {NODE}: answers pings")


def test_worker_check_fails_for_a_node_that_is_not_there(ops: Ops) -> None:
    done = worker_check(ops.env, "--node", "nobody@sdq-test", "--timeout", "1")
    assert done.returncode == 1
    assert "no heartbeat" in done.stderr
    assert "no answer to a ping" in done.stderr


def test_worker_check_fails_when_the_consumer_stops_though_the_process_lives(
    ops: Ops, redis_client: redis.Redis
) -> None:
    main_pid = ops.worker.proc.pid  # the Celery main process, which consumes from the broker
    os.kill(main_pid, signal.SIGSTOP)
    try:
        done = worker_check(ops.env, "--node", NODE, "--timeout", "1")
        # The job-running child is not stopped: its heartbeat is still fresh.
        assert live_workers(redis_client, NODE)
    finally:
        os.kill(main_pid, signal.SIGCONT)
    assert done.returncode == 1
    assert "no answer to a ping" in done.stderr
    assert "heartbeat" not in done.stderr
    again = wait_for(
        lambda: (d := worker_check(ops.env, "--node", NODE)).returncode == 0 and d,
        timeout_s=30,
        interval_s=0.5,
        what="the worker to answer again",
    )
    assert again.stdout.startswith("ok:")


def test_a_killed_worker_drops_out_of_the_fleet(
    ops: Ops, client: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    # Runs last in this module: it kills the module's worker.
    def listed() -> list[str]:
        workers = client.get("/v1/workers").raise_for_status().json()["workers"]
        return [w["name"] for w in workers if w["name"].startswith(f"{NODE}:")]

    assert listed()
    ops.worker.signal(signal.SIGKILL)  # no goodbye: only missed beats can tell
    ops.worker.proc.wait(10)
    missed = settings.heartbeat_interval_s * keys.HEARTBEAT_MISSES
    wait_for(lambda: not listed(), timeout_s=missed + 10, interval_s=0.2, what="dropped")
    assert not any(n.startswith(f"{NODE}:") for n in redis_client.zrange(keys.workers(), 0, -1))
    done = worker_check(ops.env, "--node", NODE, "--timeout", "1")
    assert done.returncode == 1


def test_worker_check_needs_no_torch() -> None:
    code = "import sys, worker.liveness, cli.main; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
