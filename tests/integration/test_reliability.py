"""Nothing accepted is lost, nothing is done twice: kills and outages on real processes.

This module runs its own redis-server (AOF on, as in production), its own rclone S3 server and
its own worker process, so it can kill, stop and restart them without touching other tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from cli.services import Service, start_redis, start_s3
from common import keys
from common.settings import Settings
from common.storage import Storage
from tests.helpers import live_workers, start_worker, submit, wait_for, wait_job

# Kills and restarts take a few worker start-ups each: more time than the default per test.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LONG = {"width": 256, "height": 256, "num_inference_steps": 100}


@dataclass
class Chaos:
    root: Path
    env: dict[str, str]
    settings: Settings
    redis: Service
    s3: Service
    client: redis.Redis
    logs: Path
    workers: list[Service] = field(default_factory=list)

    def start_worker(self) -> Service:
        node = f"chaos{len(self.workers)}@sdq-test"
        worker = start_worker(self.env, node, self.logs, self.client)
        self.workers.append(worker)
        return worker

    def restart_redis(self) -> None:
        self.redis.stop()  # SIGTERM: Redis flushes its append-only file and exits
        self.redis = start_redis(self.root / "redis", port=self.redis.port)

    def stop_s3(self) -> None:
        self.s3.stop()

    def start_s3(self) -> None:
        self.s3 = start_s3(self.root / "s3", port=self.s3.port)

    def objects(self, storage: Storage, job_id: str) -> set[str]:
        listed = storage._client.list_objects_v2(Bucket=storage.bucket, Prefix=f"jobs/{job_id}/")
        return {o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])}

    def statuses(self, job_id: str) -> list[str]:
        events = self.client.xrange(keys.job_events(job_id))
        return [e["status"] for _, e in events if e["type"] == "status"]


@pytest.fixture(scope="module")
def chaos(
    tmp_path_factory: pytest.TempPathFactory, sdq_env: dict[str, str], logs: Path
) -> Iterator[Chaos]:
    root = tmp_path_factory.mktemp("chaos")
    env = {
        **sdq_env,
        "SDQ_S3_BUCKET": "sdq-chaos",
        # Authentication has its own tests; this stack is about kills and outages.
        "SDQ_ENV": "dev",
        "SDQ_AUTH_ENABLED": "false",
        "SDQ_FAULT_INJECTION": "true",
        "SDQ_LEASE_TTL_S": "2",
        "SDQ_REAPER_INTERVAL_S": "1",
        "SDQ_STORAGE_RETRY_S": "3",
        "SDQ_SHUTDOWN_GRACE_S": "1",
        "SDQ_MAX_ATTEMPTS": "3",
    }
    state: Chaos | None = None  # the services it restarts replace the ones started here
    with contextlib.ExitStack() as cleanup:
        own_redis = start_redis(root / "redis")
        cleanup.callback(lambda: state.redis.stop() if state else own_redis.stop())
        own_s3 = start_s3(root / "s3")
        cleanup.callback(lambda: state.s3.stop() if state else own_s3.stop())
        client = redis.Redis.from_url(own_redis.extra["url"], decode_responses=True)
        cleanup.callback(client.close)
        env.update(SDQ_REDIS_URL=own_redis.extra["url"], SDQ_S3_ENDPOINT_URL=own_s3.extra["url"])
        values = {k.removeprefix("SDQ_").lower(): v for k, v in env.items() if k.startswith("SDQ_")}
        state = Chaos(root, env, Settings(**values), own_redis, own_s3, client, logs)
        cleanup.callback(lambda: [worker.stop() for worker in state.workers])
        state.start_worker()
        yield state


@pytest.fixture(scope="module")
def http(chaos: Chaos) -> Iterator[TestClient]:
    with TestClient(create_app(chaos.settings)) as client:
        yield client


@pytest.fixture(scope="module")
def chaos_storage(chaos: Chaos) -> Storage:
    return Storage(chaos.settings)


def test_sigkill_mid_job_is_redelivered_and_completes_once(
    chaos: Chaos, http: TestClient, chaos_storage: Storage
) -> None:
    job = submit(
        http, prompt="dies once", num_inference_steps=8, metadata={"sdq-fault": "kill-once@3"}
    )

    done = wait_job(http, job["id"], timeout_s=60)

    assert done["status"] == "succeeded"
    assert done["attempts"] == 2
    assert chaos.objects(chaos_storage, job["id"]) == {"0.png", "result.json"}
    statuses = chaos.statuses(job["id"])
    # Redelivered by Celery or requeued by the reaper, whichever came first: run twice, end once.
    assert statuses[0] == "queued"
    assert statuses.count("running") == 2
    assert statuses[-1] == "succeeded"
    assert sum(s in {"succeeded", "failed", "canceled", "expired"} for s in statuses) == 1


def test_poison_job_fails_worker_lost_and_the_next_job_runs(chaos: Chaos, http: TestClient) -> None:
    poison = submit(http, prompt="poison", num_inference_steps=4, metadata={"sdq-fault": "kill@2"})
    behind = submit(http, prompt="innocent")

    failed = wait_job(http, poison["id"], timeout_s=90)
    succeeded = wait_job(http, behind["id"], timeout_s=30)

    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "worker_lost"
    assert failed["attempts"] == 3
    assert succeeded["status"] == "succeeded"
    assert chaos.statuses(poison["id"]).count("failed") == 1


def test_redis_restart_loses_nothing_and_workers_consume_again(
    chaos: Chaos, http: TestClient, chaos_storage: Storage
) -> None:
    running = submit(
        http, prompt="running through a restart", width=256, height=256, num_inference_steps=60
    )
    queued = [submit(http, prompt=f"queued {n}", num_inference_steps=2) for n in range(3)]
    wait_for(lambda: http.get(f"/v1/jobs/{running['id']}").json()["progress"]["step"] > 2)

    chaos.restart_redis()

    for job in [running, *queued]:
        done = wait_job(http, job["id"], timeout_s=120)
        assert done["status"] == "succeeded", done
        assert "0.png" in chaos.objects(chaos_storage, job["id"])
    after = wait_job(http, submit(http, prompt="after the restart")["id"], timeout_s=60)
    assert after["status"] == "succeeded"


def test_storage_outage_fails_cleanly_then_recovers(
    chaos: Chaos, http: TestClient, chaos_storage: Storage
) -> None:
    chaos.stop_s3()
    try:
        during = [submit(http, prompt=f"no storage {n}", num_inference_steps=2) for n in range(2)]
        ended = [wait_job(http, job["id"], timeout_s=60) for job in during]
    finally:
        chaos.start_s3()

    for job in ended:
        assert job["status"] == "failed"
        assert job["error"]["code"] == "storage_unavailable"
        assert job["result"] is None
    after = wait_job(http, submit(http, prompt="storage is back")["id"], timeout_s=60)
    assert after["status"] == "succeeded"
    assert chaos.objects(chaos_storage, after["id"]) == {"0.png", "result.json"}


def test_deadline_passes_while_queued(chaos: Chaos, http: TestClient) -> None:
    blocker = submit(http, prompt="long", **LONG)
    wait_for(lambda: http.get(f"/v1/jobs/{blocker['id']}").json()["status"] == "running")
    late = http.post(
        "/v1/jobs",
        json={"prompt": "too late", "width": 64, "height": 64, "num_inference_steps": 1},
        headers={"Cancel-After": "500ms"},
    ).json()
    assert late["expires_at"] is not None

    expired = wait_job(http, late["id"], timeout_s=30)

    assert expired["status"] == "expired"
    assert expired["error"]["code"] == "expired"
    assert expired["started_at"] is None
    assert http.post(f"/v1/jobs/{blocker['id']}/cancel").status_code == 200
    past = http.post("/v1/jobs", json={"prompt": "x", "expires_at": "2001-01-01T00:00:00Z"})
    assert past.status_code == 422
    bad = http.post("/v1/jobs", json={"prompt": "x"}, headers={"Cancel-After": "soon"})
    assert bad.status_code == 422
    assert "Cancel-After" in bad.json()["error"]["message"]


def test_sigterm_mid_job_hands_it_back(chaos: Chaos, http: TestClient) -> None:
    job = submit(http, prompt="deploy in progress", **LONG)
    wait_for(lambda: http.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"] > 2)
    (worker,) = [w for w in chaos.workers if w.proc.poll() is None]

    os.kill(worker.proc.pid, signal.SIGTERM)  # as Kubernetes does: to the main process only
    worker.proc.wait(timeout=60)
    wait_for(lambda: not live_workers(chaos.client, worker.extra["node"]), what="heartbeat gone")
    chaos.start_worker()

    done = wait_job(http, job["id"], timeout_s=120)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 2
