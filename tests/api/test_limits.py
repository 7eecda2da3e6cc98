"""Limits: per-key rate (429), queue depth per tenant and in all (429), body size (413),
prompt and image budgets (422). Each refusal enqueues nothing, and each limit lets requests
in again once there is room."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.ratelimit import RateLimiter
from common import keys
from common.settings import Settings
from tests.helpers import create_key_headers

SMALL = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 1}


def _app(settings: Settings, **update: object) -> TestClient:
    queue = f"sdq.limits-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    return TestClient(create_app(settings.model_copy(update={"queue": queue, **update})))


def _queued(redis_client: redis.Redis, http: TestClient) -> tuple[int, int]:
    queue = http.app.state.services.settings.queue
    return redis_client.llen(queue), redis_client.zcard(keys.pending(queue))


@pytest.fixture
def http(settings: Settings, storage) -> Iterator[TestClient]:
    with _app(settings) as client:
        yield client


# --- rate limit ---------------------------------------------------------------------------


def test_token_bucket_spends_refills_and_says_when(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    key_id = uuid.uuid4().hex[:12]

    verdicts = [limiter.take(key_id, rate_per_s=0.5, burst=3) for _ in range(4)]

    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[2].remaining < 1
    assert verdicts[3].retry_after_s == 2  # one token at 0.5/s
    assert 0 < redis_client.pttl(keys.rate_bucket(key_id)) <= 7000  # gone once refilled


def test_rate_limit_is_429_with_retry_after_then_accepts_again(
    http: TestClient, redis_client: redis.Redis
) -> None:
    headers = create_key_headers(redis_client, tenant="rate-test", rate_per_s=1, burst=2)
    other = create_key_headers(redis_client, tenant="rate-test", rate_per_s=1, burst=2)

    assert [http.get("/v1/jobs", headers=headers).status_code for _ in range(2)] == [200, 200]
    limited = http.get("/v1/jobs", headers=headers)

    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    retry_after = int(limited.headers["retry-after"])
    assert 1 <= retry_after <= 2
    assert http.get("/v1/jobs", headers=other).status_code == 200  # per key, not per tenant
    time.sleep(retry_after)  # the contract under test: waiting Retry-After is enough
    assert http.get("/v1/jobs", headers=headers).status_code == 200


def test_rate_limited_submission_enqueues_nothing(
    http: TestClient, redis_client: redis.Redis
) -> None:
    headers = create_key_headers(redis_client, tenant="rate-test", rate_per_s=0.01, burst=1)
    assert http.post("/v1/jobs", json=SMALL, headers=headers).status_code == 202
    before = _queued(redis_client, http)
    assert http.post("/v1/jobs", json=SMALL, headers=headers).status_code == 429
    assert _queued(redis_client, http) == before


# --- queue depth ---------------------------------------------------------------------------


def test_tenant_queue_cap_is_429_until_a_job_leaves_the_queue(
    settings: Settings, storage, redis_client: redis.Redis
) -> None:
    tenant = f"capped-{uuid.uuid4().hex[:6]}"
    headers = create_key_headers(redis_client, tenant=tenant)
    neighbour = create_key_headers(redis_client, tenant=f"{tenant}-n")
    with _app(settings, max_queued_per_tenant=2, queue_full_retry_after_s=7) as http:
        first, _ = (http.post("/v1/jobs", json=SMALL, headers=headers) for _ in range(2))
        before = _queued(redis_client, http)

        full = http.post("/v1/jobs", json=SMALL, headers=headers)

        assert full.status_code == 429
        assert full.json()["error"]["code"] == "tenant_queue_full"
        assert full.headers["retry-after"] == "7"
        assert _queued(redis_client, http) == before
        assert http.post("/v1/jobs", json=SMALL, headers=neighbour).status_code == 202
        canceled = http.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=headers)
        assert canceled.json()["status"] == "canceled"
        assert http.post("/v1/jobs", json=SMALL, headers=headers).status_code == 202


def test_global_queue_cap_is_429_for_everyone_until_there_is_room(
    settings: Settings, storage, redis_client: redis.Redis
) -> None:
    a = create_key_headers(redis_client, tenant="global-a")
    b = create_key_headers(redis_client, tenant="global-b")
    with _app(settings, max_queued_total=2) as http:
        first = http.post("/v1/jobs", json=SMALL, headers=a).json()
        assert http.post("/v1/jobs", json=SMALL, headers=a).status_code == 202

        full = http.post("/v1/jobs", json=SMALL, headers=b)

        assert full.status_code == 429
        assert full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["retry-after"]) >= 1
        http.post(f"/v1/jobs/{first['id']}/cancel", headers=a)
        assert http.post("/v1/jobs", json=SMALL, headers=b).status_code == 202


# --- request size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("update", "body", "field"),
    [
        ({"max_prompt_chars": 10}, {"prompt": "x" * 11}, "prompt.0"),
        ({"max_prompt_chars": 10}, {"prompt": "ok", "negative_prompt": "y" * 11}, "negative_"),
        ({"max_prompts_per_job": 2}, {"prompt": ["a", "b", "c"]}, "prompt"),
        ({"max_images_per_job": 3}, {"prompt": ["a", "b"], "num_images_per_prompt": 2}, "num_"),
        ({"max_pixels_per_job": 128 * 128}, {"width": 256, "height": 128}, "width"),
    ],
)
def test_budget_caps_are_422_naming_the_field(
    settings: Settings,
    storage,
    redis_client: redis.Redis,
    auth_headers: dict[str, str],
    update: dict,
    body: dict,
    field: str,
) -> None:
    with _app(settings, **update) as http:
        response = http.post("/v1/jobs", json={**SMALL, **body}, headers=auth_headers)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"][0]["field"].startswith(field)
        assert error["details"][0]["limit"] == next(iter(update.values()))
        assert _queued(redis_client, http) == (0, 0)
        assert http.post("/v1/jobs", json=SMALL, headers=auth_headers).status_code == 202


def test_body_over_the_cap_is_413_by_header_and_by_bytes(
    settings: Settings, storage, redis_client: redis.Redis, auth_headers: dict[str, str]
) -> None:
    with _app(settings, max_body_bytes=2048) as http:
        big = {**SMALL, "metadata": {"pad": "x" * 500, "more": "y" * 500, "most": "z" * 500}}
        declared = http.post("/v1/jobs", json={**big, "prompt": "p" * 1200}, headers=auth_headers)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: only counting can catch it
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"p" * 500
            yield b'"}'

        streamed = http.post(
            "/v1/jobs",
            content=chunks(),
            headers={**auth_headers, "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "payload_too_large"
        assert _queued(redis_client, http) == (0, 0)
        assert http.post("/v1/jobs", json=SMALL, headers=auth_headers).status_code == 202
