"""Webhooks end to end: a GPU worker, a webhook worker (`sdq worker --queues webhooks`) and a
real receiver on loopback. Every request the receiver gets is verified with the official
`standardwebhooks` library.

This module runs its own worker on its own queue (with fault injection on) and its own webhook
worker, with a compressed retry schedule, on the session's Redis and S3.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from api.main import create_app
from cli.services import Service, sdq_command, spawn
from common import keys
from common.settings import Settings
from tests.helpers import live_workers, start_worker, submit, wait_for, wait_job
from tests.receiver import Receiver, Reply, Request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

QUEUE = "wh.jobs"
HOOKS_NODE = "webhooks@sdq-test"


@dataclass
class Stack:
    env: dict[str, str]
    secret: str
    receiver: Receiver
    http: TestClient
    redis: redis.Redis
    logs: Path
    hooks: Service

    def url(self, kind: str) -> tuple[str, str]:
        path = f"/{kind}/{uuid.uuid4().hex[:8]}"
        return path, self.receiver.url(path)

    def verified(self, requests: list[Request]) -> list[dict[str, Any]]:
        """Each body, after the official library checked its signature and timestamp."""
        return [Webhook(self.secret).verify(r.body, r.headers) for r in requests]

    def deliveries(self, job_id: str, kind: str = "jobs") -> list[dict[str, Any]]:
        return (
            self.http.get(f"/v1/{kind}/{job_id}/webhooks").raise_for_status().json()["deliveries"]
        )

    def settled(self, job_id: str, count: int, kind: str = "jobs") -> list[dict[str, Any]]:
        """The job's deliveries once ``count`` exist and none is pending any more."""

        def probe() -> list[dict[str, Any]] | None:
            found = self.deliveries(job_id, kind)
            done = len(found) >= count and all(d["state"] != "pending" for d in found)
            return found if done else None

        return wait_for(probe, timeout_s=60, what=f"{count} settled deliveries of {job_id}")


def start_webhook_worker(env: dict[str, str], logs: Path, client: redis.Redis) -> Service:
    log_path = logs / "webhooks.log"
    proc = spawn(
        "webhooks",
        sdq_command("worker", "--queues", "webhooks", "--hostname", HOOKS_NODE),
        log_path=log_path,
        env=env,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"webhook worker exited:\n{log_path.read_text()[-3000:]}")
        names = client.zrange(keys.webhook_workers(), 0, -1)
        return any(n == f"{HOOKS_NODE}:{proc.pid}" for n in names)

    wait_for(ready, timeout_s=60, interval_s=0.1, what="the webhook worker")
    return Service("webhooks", proc, log_path=log_path)


@pytest.fixture(scope="module")
def stack(
    sdq_env: dict[str, str],
    logs: Path,
    redis_client: redis.Redis,
    storage,
    auth_headers: dict[str, str],
) -> Iterator[Stack]:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    env = {
        **sdq_env,
        "SDQ_QUEUE": QUEUE,
        "SDQ_WEBHOOK_SECRET": secret,
        "SDQ_WEBHOOK_ALLOW_HTTP": "true",
        "SDQ_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "SDQ_WEBHOOK_RETRY_SCHEDULE": "0,0.3,0.3",
        "SDQ_WEBHOOK_TIMEOUT_S": "60",  # the hanging receiver is held for as long as it takes
        "SDQ_WEBHOOK_POLL_INTERVAL_S": "0.1",
        "SDQ_FAULT_INJECTION": "true",
        "SDQ_LEASE_TTL_S": "2",
        "SDQ_REAPER_INTERVAL_S": "1",
    }
    values = {k.removeprefix("SDQ_").lower(): v for k, v in env.items() if k.startswith("SDQ_")}
    receiver = Receiver()
    gpu = start_worker(env, "whgpu@sdq-test", logs, redis_client)
    hooks = start_webhook_worker(env, logs, redis_client)
    with TestClient(create_app(Settings(**values)), headers=auth_headers) as http:
        state = Stack(env, secret, receiver, http, redis_client, logs, hooks)
        yield state
    state.hooks.stop()
    gpu.stop()
    receiver.close()


def _job(stack: Stack, url: str, events: list[str] | None = None, **body: Any) -> dict[str, Any]:
    webhook = {"url": url} | ({"events": events} if events else {})
    return submit(stack.http, prompt="a webhook test", webhook=webhook, **body)


def _strip_urls(job: dict[str, Any]) -> dict[str, Any]:
    """A job without its presigned URLs (signed afresh on every read)."""
    if job.get("result"):
        for image in job["result"]["images"]:
            image.pop("url")
            image.pop("expires_at")
    return job


def test_signed_events_carry_the_job_as_get_returns_it(stack: Stack) -> None:
    path, url = stack.url("ok")
    job = _job(stack, url, ["job.started", "job.succeeded"])

    done = wait_job(stack.http, job["id"])
    started, succeeded = sorted(
        stack.verified(stack.receiver.wait_for(path, 2)), key=lambda b: b["type"] != "job.started"
    )

    assert done["status"] == "succeeded"
    assert started["type"] == "job.started"
    assert started["data"]["status"] == "running"
    assert succeeded["type"] == "job.succeeded"
    assert succeeded["timestamp"].endswith("Z")
    assert _strip_urls(succeeded["data"]) == _strip_urls(done)
    assert succeeded["data"]["result"]["images"][0]["key"].startswith(f"jobs/{job['id']}/")
    ids = {r.headers["webhook-id"] for r in stack.receiver.received(path)}
    assert ids == {f"msg_{job['id']}_started", f"msg_{job['id']}_succeeded"}
    log = stack.settled(job["id"], 2)
    assert {d["event"]: d["state"] for d in log} == {
        "job.started": "delivered",
        "job.succeeded": "delivered",
    }
    assert [a["status_code"] for d in log for a in d["attempts"]] == [200, 200]


def test_a_receiver_failing_twice_gets_three_attempts_with_one_webhook_id(stack: Stack) -> None:
    path, url = stack.url("flaky")
    stack.receiver.script(path, Reply(500), Reply(503))
    job = _job(stack, url)

    attempts = stack.receiver.wait_for(path, 3)
    stack.verified(attempts)
    (delivery,) = stack.settled(job["id"], 1)

    assert {r.headers["webhook-id"] for r in attempts} == {f"msg_{job['id']}_succeeded"}
    assert len({r.headers["webhook-signature"] for r in attempts}) >= 1
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]
    assert delivery["state"] == "delivered"
    assert delivery["attempts"][0]["next_retry_at"] is not None


def test_410_stops_retries_and_redeliver_sends_the_same_message_again(stack: Stack) -> None:
    path, url = stack.url("gone")
    stack.receiver.script(path, Reply(410))
    job = _job(stack, url)

    (delivery,) = stack.settled(job["id"], 1)
    assert delivery["state"] == "failed"
    assert [a["status_code"] for a in delivery["attempts"]] == [410]
    assert delivery["next_retry_at"] is None
    assert stack.redis.zscore(keys.webhook_due(), delivery["id"]) is None
    assert len(stack.receiver.received(path)) == 1

    again = stack.http.post(
        f"/v1/jobs/{job['id']}/webhooks/{delivery['id']}/redeliver"
    ).raise_for_status()
    assert again.status_code == 202
    assert again.json()["redelivery_of"] == delivery["id"]
    first, second = stack.receiver.wait_for(path, 2)
    stack.verified([first, second])
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    log = stack.settled(job["id"], 2)
    assert [d["state"] for d in log] == ["failed", "delivered"]


def test_a_hanging_receiver_never_delays_the_next_gpu_job(stack: Stack) -> None:
    path, url = stack.url("hang")
    release = threading.Event()
    stack.receiver.script(path, Reply(hang=release))
    try:
        hung = _job(stack, url)
        wait_for(lambda: stack.receiver.in_flight[path] == 1, what="the receiver to hang")

        behind = submit(stack.http, prompt="right behind it")
        done = wait_job(stack.http, behind["id"], timeout_s=30)

        assert done["status"] == "succeeded"
        assert stack.receiver.in_flight[path] == 1  # the webhook is still waiting meanwhile
        assert wait_job(stack.http, hung["id"])["status"] == "succeeded"
    finally:
        release.set()
    (delivery,) = stack.settled(hung["id"], 1)
    assert delivery["state"] == "delivered"


def test_terminal_events_are_sent_once_when_the_job_runs_twice(stack: Stack) -> None:
    path, url = stack.url("twice")
    job = _job(
        stack,
        url,
        ["job.started", "job.succeeded", "job.failed"],
        num_inference_steps=4,
        metadata={"sdq-fault": "kill-once@2"},  # SIGKILLs the GPU process on the first attempt
    )

    done = wait_job(stack.http, job["id"], timeout_s=90)
    log = stack.settled(job["id"], 2)

    assert done["status"] == "succeeded"
    assert done["attempts"] == 2
    assert sorted(d["event"] for d in log) == ["job.started", "job.succeeded"]
    bodies = stack.verified(stack.receiver.wait_for(path, 2))
    assert sorted(b["type"] for b in bodies) == ["job.started", "job.succeeded"]


def test_retry_after_is_honoured_and_a_pending_retry_survives_a_restart(stack: Stack) -> None:
    path, url = stack.url("busy")
    stack.receiver.script(path, Reply(503, {"Retry-After": "3"}))
    job = _job(stack, url)

    stack.receiver.wait_for(path, 1)
    wait_for(
        lambda: (d := stack.deliveries(job["id"])) and d[0]["attempts"],
        what="the first attempt recorded",
    )
    stack.hooks.proc.kill()  # no goodbye: its threads and claims die with it
    stack.hooks.proc.wait()
    stack.hooks = start_webhook_worker(stack.env, stack.logs, stack.redis)

    first, second = stack.verified(stack.receiver.wait_for(path, 2))
    (delivery,) = stack.settled(job["id"], 1)
    assert first == second
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 200]
    gap = _seconds(delivery["attempts"][1]["at"]) - _seconds(delivery["attempts"][0]["at"])
    assert gap >= 3
    assert len(stack.receiver.received(path)) == 2


def test_progress_is_opt_in_and_at_most_once_a_second(stack: Stack) -> None:
    path, url = stack.url("progress")
    job = _job(stack, url, ["job.progress", "job.succeeded"], num_inference_steps=40)

    wait_job(stack.http, job["id"])
    stack.settled(job["id"], 2)
    bodies = stack.verified(stack.receiver.received(path))

    progress = sorted(b["timestamp"] for b in bodies if b["type"] == "job.progress")
    assert progress
    assert all(b["data"]["status"] == "running" for b in bodies if b["type"] == "job.progress")
    gaps = [_seconds(b) - _seconds(a) for a, b in itertools.pairwise(progress)]
    assert all(gap >= 1 for gap in gaps), gaps


def test_a_batch_announces_completion(stack: Stack) -> None:
    path, url = stack.url("batch")
    response = stack.http.post(
        "/v1/batches",
        json={
            "prompts": ["a red fox", "a lighthouse"],
            "parameters": {"width": 64, "height": 64, "num_inference_steps": 2},
            "webhook": {"url": url},
        },
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["webhook"] == {"url": url, "events": ["batch.completed"]}

    (body,) = stack.verified(stack.receiver.wait_for(path, 1, timeout_s=60))
    assert body["type"] == "batch.completed"
    assert body["data"]["id"] == batch["id"]
    assert body["data"]["status"] == "completed"
    assert body["data"]["counts"]["succeeded"] == 2
    (delivery,) = stack.settled(batch["id"], 1, kind="batches")
    assert delivery["webhook_id"] == f"msg_{batch['id']}_completed"


def test_the_webhook_worker_is_a_cpu_process_the_probe_understands(stack: Stack) -> None:
    pid = stack.hooks.proc.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "libtorch" not in maps  # no pipeline, not even torch
    assert live_workers(stack.redis, HOOKS_NODE) == []  # not counted as GPU capacity
    check = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker-check", "--node", HOOKS_NODE],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    stack.hooks.signal(signal.SIGSTOP)  # hung: no beats, no pings
    try:
        wait_for(
            lambda: (
                subprocess.run(
                    [sys.executable, "-m", "cli.main", "worker-check", "--node", HOOKS_NODE],
                    env=stack.env,
                    capture_output=True,
                    timeout=60,
                ).returncode
                == 1
            ),
            timeout_s=30,
            interval_s=1,
            what="the probe to fail",
        )
    finally:
        stack.hooks.signal(signal.SIGCONT)


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
