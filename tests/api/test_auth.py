"""API keys on the HTTP API: no key, a bad key or a revoked key gets nowhere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from common.apikeys import ApiKeys
from common.settings import Settings

QUEUE = "sdq.auth-only"  # no worker consumes it


@pytest.fixture(scope="module")
def http(settings: Settings, storage) -> Iterator[TestClient]:
    """An in-process app with auth on, and no default credentials."""
    with TestClient(create_app(settings.model_copy(update={"queue": QUEUE}))) as client:
        yield client


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        _bearer("not-a-key"),
        _bearer("sdq_000000000000_" + "A" * 43),
    ],
)
def test_requests_without_a_valid_key_are_401(
    http: TestClient, redis_client: redis.Redis, headers: dict[str, str]
) -> None:
    before = redis_client.llen(QUEUE)
    for method, path in [("GET", "/v1/jobs"), ("GET", "/v1/jobs/abc"), ("GET", "/v1/workers")]:
        response = http.request(method, path, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] in {"unauthorized", "invalid_api_key"}
    submitted = http.post("/v1/jobs", json={"prompt": "a cat"}, headers=headers)
    assert submitted.status_code == 401
    assert redis_client.llen(QUEUE) == before


def test_revoked_key_is_refused_at_once(http: TestClient, redis_client: redis.Redis) -> None:
    store = ApiKeys(redis_client)
    new = store.create("revokee")
    assert http.get("/v1/jobs", headers=_bearer(new.key)).status_code == 200

    store.revoke(new.record.id)

    refused = http.get("/v1/jobs", headers=_bearer(new.key))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


def test_probes_and_the_schema_need_no_key(http: TestClient) -> None:
    for path in ["/healthz", "/readyz", "/openapi.json"]:
        assert http.get(path).status_code == 200, path
    schemes = http.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["apiKey"]["description"],
    }


def test_auth_off_is_tenant_default_in_dev_only(settings: Settings, storage) -> None:
    open_settings = settings.model_copy(update={"queue": QUEUE, "auth_enabled": False})
    with TestClient(create_app(open_settings)) as http:
        assert http.get("/v1/jobs").status_code == 200
    with pytest.raises(ValueError, match="SDQ_AUTH_ENABLED is false"):
        Settings(**{**open_settings.model_dump(), "env": "production"})
