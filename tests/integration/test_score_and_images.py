"""/score (the seed's real-time interface) and /v1/images/generations (OpenAI's) on the real
queue, worker process and S3."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from cli.services import Service
from common.settings import Settings
from common.storage import Storage
from tests.helpers import submit, wait_job

pytestmark = pytest.mark.integration

# The seed's sample input for real-time inference, byte for byte (seeds/ beside DESIGN.md).
SEED_SAMPLE_INPUT = b"""{
   "input_data": {
        "columns": ["prompt"],
        "data": ["a photograph of an astronaut riding a horse", "a photograph of a cat riding a horse"],
        "index": [0]
    }
}"""  # noqa: E501

SEED_PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "a photograph of a cat riding a horse",
]

# The sample sets no parameters; on CPU the tiny model's defaults (512x512, 50 steps) are slow.
FAST = {"width": 64, "height": 64, "num_inference_steps": 2}


def _app(settings: Settings, **update: object) -> TestClient:
    return create_app(settings.model_copy(update={"score_defaults": FAST, **update}))


@pytest.fixture
def http(
    settings: Settings, worker: Service, storage: Storage, auth_headers: dict[str, str]
) -> Iterator[TestClient]:
    """An in-process API on the worker's queue, with fast /score defaults."""
    with TestClient(_app(settings), headers=auth_headers) as client:
        yield client


def test_seed_sample_input_byte_for_byte(http: TestClient, storage: Storage) -> None:
    response = http.post(
        "/score", content=SEED_SAMPLE_INPUT, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 200, response.text
    (answer,) = response.json()
    assert set(answer) == {"generated_image", "nsfw_content_detected"}
    assert len(answer["generated_image"]) == 2
    assert answer["nsfw_content_detected"] == ["False", "False"]
    decoded = [base64.b64decode(b64, validate=True) for b64 in answer["generated_image"]]
    for data in decoded:
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.size) == ("PNG", (64, 64))
    # Same path as /v1/jobs: one job with both prompts; the bytes are the stored images.
    (job,) = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"]
    assert job["request"]["prompt"] == SEED_PROMPTS
    assert job["status"] == "succeeded"
    assert decoded == [storage.get(image["key"]) for image in job["result"]["images"]]


def test_score_columns_and_parameters(http: TestClient) -> None:
    body = {
        "input_data": {
            "columns": ["prompt", "seed", "negative_prompt"],
            "data": [["a red fox", 11, "blurry"], ["a red fox", 11, None]],
        },
        "parameters": {"width": 72, "height": 64},
    }
    response = http.post("/score", json=body)

    assert response.status_code == 200, response.text
    images = [base64.b64decode(b) for b in response.json()[0]["generated_image"]]
    assert [Image.open(io.BytesIO(b)).size for b in images] == [(72, 64), (72, 64)]
    assert images[0] != images[1]  # same seed, one with a negative prompt
    jobs = http.get("/v1/jobs", params={"limit": 2}).json()["jobs"][::-1]
    assert [j["request"]["seed"] for j in jobs] == [11, 11]
    assert [j["request"]["negative_prompt"] for j in jobs] == [["blurry"], None]


def test_score_timeout_is_504_with_job_ids_and_the_job_goes_on(
    http: TestClient, settings: Settings, auth_headers: dict[str, str]
) -> None:
    blocker = submit(http, prompt="blocker", width=256, height=256, num_inference_steps=150)
    with TestClient(_app(settings, sync_timeout_s=0.5), headers=auth_headers) as impatient:
        response = impatient.post(
            "/score", json={"input_data": {"columns": ["prompt"], "data": ["late"]}}
        )
    try:
        assert response.status_code == 504, response.text
        error = response.json()["error"]
        assert error["code"] == "timeout"
        (job_id,) = error["details"]["job_ids"]
        assert f"/v1/jobs/{job_id}" in error["message"]
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    finally:
        http.post(f"/v1/jobs/{blocker['id']}/cancel")
    assert wait_job(http, job_id)["status"] == "succeeded"


@pytest.fixture
def openai_client(api_server: Service, worker: Service, auth_headers: dict[str, str]):
    api_key = auth_headers["Authorization"].removeprefix("Bearer ")
    with openai.OpenAI(
        base_url=f"{api_server.extra['url']}/v1", api_key=api_key, max_retries=0, timeout=60
    ) as client:
        yield client


def test_openai_client_b64_json_and_url(openai_client: openai.OpenAI, tmp_path: Path) -> None:
    extras = {"seed": 42, "num_inference_steps": 2, "negative_prompt": "blurry"}
    inline = openai_client.images.generate(
        model="stable-diffusion-v1-5",
        prompt="a photograph of an astronaut riding a horse",
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body=extras,
    )
    linked = openai_client.images.generate(
        prompt="a photograph of an astronaut riding a horse",
        n=2,
        size="64x64",
        response_format="url",
        extra_body=extras,
    )

    assert inline.created > 0
    saved = []
    for n, image in enumerate(inline.data):
        assert image.url is None
        path = tmp_path / f"b64-{n}.png"
        path.write_bytes(base64.b64decode(image.b64_json))
        saved.append(path)
    for n, image in enumerate(linked.data):
        assert image.b64_json is None
        fetched = httpx.get(image.url, timeout=10)  # presigned: no credentials
        assert fetched.status_code == 200
        path = tmp_path / f"url-{n}.png"
        path.write_bytes(fetched.content)
        saved.append(path)
    for path in saved:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (64, 64))
    # Same seed, same images: the two calls are the same generation.
    assert [p.read_bytes() for p in saved[:2]] == [p.read_bytes() for p in saved[2:]]
    assert saved[0].read_bytes() != saved[1].read_bytes()  # image n uses seed + n


def test_openai_client_sees_validation_errors(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        openai_client.images.generate(prompt="a cat", n=9)
    assert "n:" in caught.value.message
