"""Content policy on input: refused prompts are a 400 ``content_policy``, nothing enqueued."""

from __future__ import annotations

import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.policy import ContentPolicy
from common import keys
from common.settings import Settings

SMALL = {"width": 64, "height": 64, "num_inference_steps": 1}
HOOK_CALLS: list[tuple[list[str], str]] = []


def refuse_unicorns(prompts: list[str], tenant: str) -> str | None:
    """A stand-in for an external content-safety service."""
    HOOK_CALLS.append((prompts, tenant))
    return "unicorns are not allowed here" if any("unicorn" in p for p in prompts) else None


def broken_checker(prompts: list[str], tenant: str) -> str | None:
    raise ConnectionError("content-safety service unreachable")


@pytest.fixture
def app_for(settings: Settings, storage, auth_headers: dict[str, str]):
    opened: list[TestClient] = []

    def build(**update: object) -> TestClient:
        queue = f"sdq.policy-{uuid.uuid4().hex[:8]}"  # no worker consumes it
        app = create_app(settings.model_copy(update={"queue": queue, **update}))
        client = TestClient(app, headers=auth_headers).__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)


def _queued(redis_client: redis.Redis, http: TestClient) -> tuple[int, int]:
    queue = http.app.state.services.settings.queue
    return redis_client.llen(queue), redis_client.zcard(keys.pending(queue))


def _post(http: TestClient, **body: object):
    return http.post("/v1/jobs", json={**SMALL, **body})


@pytest.mark.parametrize(
    "prompt",
    [
        "a GORY scene",
        "gory",
        ["fine", "very gory"],
        "a \uff47\uff4f\uff52\uff59 scene",  # full-width letters
        "scene: gory!",
    ],
)
def test_listed_terms_are_refused(app_for, redis_client: redis.Redis, prompt: object) -> None:
    http = app_for(content_policy_terms=("gory", "bad phrase"))
    response = _post(http, prompt=prompt)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "content_policy"
    assert error["details"]["prompt_index"] == (1 if isinstance(prompt, list) else 0)
    assert _queued(redis_client, http) == (0, 0)


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "a gorylla"},  # whole words only
        {"prompt": "a bad, phrase"},
        {"prompt": "a castle", "negative_prompt": "gory, blurry"},  # negatives keep things out
    ],
)
def test_everything_else_passes(app_for, body: dict) -> None:
    http = app_for(content_policy_terms=("gory", "bad phrase"))
    assert _post(http, **body).status_code == 202


def test_external_checker_hook_refuses_and_sees_the_tenant(app_for, redis_client) -> None:
    http = app_for(content_policy_hook=f"{__name__}:refuse_unicorns")
    HOOK_CALLS.clear()

    refused = _post(http, prompt=["a horse", "a unicorn"])
    accepted = _post(http, prompt="a horse")

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "content_policy"
    assert "unicorns are not allowed" in refused.json()["error"]["message"]
    assert accepted.status_code == 202
    assert HOOK_CALLS == [(["a horse", "a unicorn"], "tests"), (["a horse"], "tests")]
    assert _queued(redis_client, http) == (1, 1)


def test_failing_checker_fails_closed_with_503(app_for, redis_client) -> None:
    http = app_for(content_policy_hook=f"{__name__}:broken_checker")
    response = _post(http, prompt="a horse")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "content_policy_unavailable"
    assert int(response.headers["retry-after"]) > 0
    assert _queued(redis_client, http) == (0, 0)


def test_bad_hook_path_fails_at_start() -> None:
    for path in ["no_colon", "tests.api.test_policy:missing", "json:__doc__"]:
        with pytest.raises((ValueError, AttributeError, TypeError)):
            ContentPolicy.from_settings(Settings(env="dev", content_policy_hook=path))
