"""Webhooks at submit time: every SSRF vector is a 422 and nothing is queued; the delivery log
and redelivery are the tenant's own."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from common import keys
from common.settings import Settings
from tests.common.test_ssrf import INTERNAL, MALFORMED
from tests.helpers import create_key_headers

QUEUE = "sdq.webhooks-validation-only"  # no worker consumes it
VALID = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 1}
PUBLIC = "https://93.184.215.14/hook"  # a public literal: no DNS needed


@pytest.fixture(scope="module")
def app_settings(settings: Settings) -> Settings:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    return settings.model_copy(
        update={
            "queue": QUEUE,
            "batch_queue": f"{QUEUE}.batch",
            "webhook_secret": SecretStr(secret),
        }
    )


@pytest.fixture(scope="module")
def http(app_settings: Settings, storage, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings), headers=auth_headers) as client:
        yield client


def _queued(redis_client: redis.Redis) -> int:
    return redis_client.llen(QUEUE) + redis_client.zcard(keys.pending(QUEUE))


@pytest.mark.parametrize("url", INTERNAL + MALFORMED)
def test_every_ssrf_vector_is_refused_at_submit(
    http: TestClient, redis_client: redis.Redis, url: str
) -> None:
    before = _queued(redis_client)
    response = http.post("/v1/jobs", json={**VALID, "webhook": {"url": url}})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith("webhook")
    assert _queued(redis_client) == before


def test_batch_webhooks_are_checked_too(http: TestClient, redis_client: redis.Redis) -> None:
    before = redis_client.llen(f"{QUEUE}.batch")
    for webhook in (
        {"url": "https://169.254.169.254/latest/meta-data/"},
        {"url": PUBLIC, "events": ["job.succeeded"]},
    ):
        response = http.post("/v1/batches", json={"prompts": ["a"], "webhook": webhook})
        assert response.status_code == 422, response.text
    upload = http.post(
        "/v1/batches/upload",
        files={"file": ("p.csv", b"prompt\na fox\n", "text/csv")},
        data={"webhook": '{"url": "https://[::1]/hook"}'},
    )
    assert upload.status_code == 422, upload.text
    assert redis_client.llen(f"{QUEUE}.batch") == before


def test_job_events_only_for_a_job(http: TestClient) -> None:
    response = http.post(
        "/v1/jobs", json={**VALID, "webhook": {"url": PUBLIC, "events": ["batch.completed"]}}
    )
    assert response.status_code == 422
    assert "webhook" in response.json()["error"]["message"]


def test_no_signing_secret_no_webhooks(settings: Settings, storage, auth_headers) -> None:
    app = create_app(settings.model_copy(update={"queue": QUEUE, "webhook_secret": None}))
    with TestClient(app, headers=auth_headers) as http:
        response = http.post("/v1/jobs", json={**VALID, "webhook": {"url": PUBLIC}})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "webhooks_disabled"


def test_the_job_shows_its_webhook_and_its_log_is_the_tenants_own(
    http: TestClient, redis_client: redis.Redis
) -> None:
    response = http.post(
        "/v1/jobs", json={**VALID, "webhook": {"url": PUBLIC, "events": ["job.started"]}}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["webhook"] == {"url": PUBLIC, "events": ["job.started"]}
    assert job["links"]["webhooks"] == f"/v1/jobs/{job['id']}/webhooks"
    assert http.get(job["links"]["webhooks"]).json() == {"deliveries": []}
    assert http.post(f"{job['links']['webhooks']}/dlv_nope/redeliver").status_code == 404

    other = create_key_headers(redis_client, tenant="someone-else")
    assert http.get(job["links"]["webhooks"], headers=other).status_code == 404
    assert (
        http.post(f"{job['links']['webhooks']}/dlv_nope/redeliver", headers=other).status_code
        == 404
    )
