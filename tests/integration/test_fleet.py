"""More than one worker process, and a worker whose safety checker flags everything."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from common import keys
from common.settings import Settings
from common.storage import Storage
from tests.helpers import start_worker, submit, wait_job

pytestmark = pytest.mark.integration


def test_two_workers_drain_twenty_jobs_exactly_once(
    client: httpx.Client,
    sdq_env: dict[str, str],
    logs: Path,
    redis_client: redis.Redis,
    storage: Storage,
) -> None:
    second = start_worker(sdq_env, "w2@sdq-test", logs, redis_client)
    try:
        jobs = [
            submit(client, prompt=f"fleet {n}", width=128, height=128, num_inference_steps=6)
            for n in range(20)
        ]
        finished = [wait_job(client, job["id"], timeout_s=120) for job in jobs]
    finally:
        second.stop()

    assert {job["status"] for job in finished} == {"succeeded"}
    assert {job["attempts"] for job in finished} == {1}
    nodes = {job["worker"].split(":")[0] for job in finished}
    assert nodes == {"w1@sdq-test", "w2@sdq-test"}
    for job in finished:
        events = redis_client.xrange(keys.job_events(job["id"]))
        statuses = [e["status"] for _, e in events if e["type"] == "status"]
        assert statuses == ["queued", "running", "succeeded"]
        assert storage.exists(job["result"]["images"][0]["key"])


def test_flagged_images_are_blacked_out(
    sdq_env: dict[str, str],
    settings: Settings,
    logs: Path,
    redis_client: redis.Redis,
    storage: Storage,
    model_cache: Path,
    auth_headers: dict[str, str],
) -> None:
    from worker.tiny import ensure_tiny_model

    flagging_model = ensure_tiny_model(model_cache, flag_all=True)
    env = {**sdq_env, "SDQ_MODEL": str(flagging_model), "SDQ_QUEUE": "sdq.flagging"}
    flagger = start_worker(env, "flagger@sdq-test", logs, redis_client)
    app = create_app(settings.model_copy(update={"queue": "sdq.flagging"}))
    try:
        with TestClient(app, headers=auth_headers) as http:
            job = submit(http, prompt=["one", "two"], seed=5)
            job = wait_job(http, job["id"])
    finally:
        flagger.stop()

    assert job["status"] == "succeeded"
    assert job["result"]["nsfw_content_detected"] == [True, True]
    for image in job["result"]["images"]:
        assert image["nsfw_content_detected"] is True
        pixels = Image.open(io.BytesIO(storage.get(image["key"]))).convert("RGB")
        assert pixels.getextrema() == ((0, 0), (0, 0), (0, 0))  # black
