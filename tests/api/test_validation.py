"""Bad input never reaches the queue: 4xx with a message naming the field."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from common import keys
from common.settings import Settings

QUEUE = "sdq.validation-only"  # no worker consumes it: whatever is enqueued stays visible

VALID = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 1}


@pytest.fixture(scope="module")
def http(settings: Settings, storage, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"queue": QUEUE}))
    with TestClient(app, headers=auth_headers) as client:
        yield client


def _queued(redis_client: redis.Redis) -> tuple[int, int]:
    return redis_client.llen(QUEUE), redis_client.zcard(keys.pending(QUEUE))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**VALID, "prompt": ""}, "prompt"),
        ({**VALID, "prompt": "   "}, "prompt"),
        ({**VALID, "prompt": [f"p{n}" for n in range(17)]}, "prompt"),
        ({**VALID, "prompt": []}, "prompt"),
        ({**VALID, "width": 100}, "width"),
        ({**VALID, "height": 2048}, "height"),
        ({**VALID, "num_inference_steps": 0}, "num_inference_steps"),
        ({**VALID, "num_inference_steps": 500}, "num_inference_steps"),
        ({**VALID, "guidance_scale": -1}, "guidance_scale"),
        ({**VALID, "num_images_per_prompt": 9}, "num_images_per_prompt"),
        ({**VALID, "seed": 2**32}, "seed"),
        ({**VALID, "scheduler": "warp_drive"}, "scheduler"),
        ({**VALID, "output_format": "gif"}, "output_format"),
        ({**VALID, "colour": "blue"}, "colour"),
        ({**VALID, "negative_prompt": ["a", "b"]}, "negative_prompt"),
        ({**VALID, "metadata": {"k": 5}}, "metadata"),
        ({k: v for k, v in VALID.items() if k != "prompt"}, "prompt"),
    ],
)
def test_bad_body_is_422_naming_the_field(
    http: TestClient, redis_client: redis.Redis, body: dict, field: str
) -> None:
    before = _queued(redis_client)
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["message"]
    assert any(d["field"].startswith(field) for d in error["details"])
    assert _queued(redis_client) == before


def test_malformed_json_and_wrong_content_type(http: TestClient, redis_client: redis.Redis) -> None:
    before = _queued(redis_client)
    broken = http.post(
        "/v1/jobs", content=b'{"prompt": "a cat",', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 422
    assert "JSON" in broken.json()["error"]["message"]
    form = http.post("/v1/jobs", data={"prompt": "a cat"})
    assert form.status_code == 415
    assert "Content-Type" in form.json()["error"]["message"]
    assert _queued(redis_client) == before


def test_valid_body_is_enqueued(http: TestClient, redis_client: redis.Redis) -> None:
    """The control for the tests above: a good request does reach the queue."""
    llen, pending = _queued(redis_client)
    response = http.post("/v1/jobs", json=VALID)
    assert response.status_code == 202
    assert _queued(redis_client) == (llen + 1, pending + 1)
    assert response.json()["queue_position"] == pending
