"""Tenants on the real API process: another tenant's job or batch is indistinguishable from
none at all, on every route that takes its id; listings are one's own; the bucket is private
and its presigned URLs expire (checked by the rclone S3 server, which verifies signatures)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest
import redis

from cli.services import Service
from common.settings import Settings
from common.storage import Storage
from tests.helpers import create_key_headers, submit, wait_for, wait_job

pytestmark = pytest.mark.integration


@pytest.fixture
def other(api_server: Service, redis_client: redis.Redis) -> Iterator[httpx.Client]:
    """A client of another tenant."""
    headers = create_key_headers(redis_client, tenant=f"other-{uuid.uuid4().hex[:6]}")
    with httpx.Client(base_url=api_server.extra["url"], timeout=30, headers=headers) as http:
        yield http


@pytest.fixture(scope="module")
def finished(api_server: Service, worker: Service, auth_headers: dict[str, str]) -> dict:
    """A succeeded job of tenant "tests"."""
    with httpx.Client(base_url=api_server.extra["url"], timeout=30, headers=auth_headers) as c:
        return wait_job(c, submit(c, prompt="isolation", num_images_per_prompt=2)["id"])


def _routes(client: httpx.Client, parameter: str) -> list[tuple[str, str]]:
    """Every (method, path template) of the API that takes ``{parameter}`` — whoever added it."""
    paths = client.get("/openapi.json").json()["paths"]
    return [
        (method.upper(), path)
        for path, item in paths.items()
        if f"{{{parameter}}}" in path
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def _call(
    client: httpx.Client, method: str, template: str, parameter: str, value: str
) -> httpx.Response:
    path = template.replace(f"{{{parameter}}}", value)
    path = "/".join("x" if p.startswith("{") else p for p in path.split("/"))
    return client.request(method, path)


def _assert_indistinguishable(
    mine: httpx.Client, theirs: httpx.Client, parameter: str, owned_id: str
) -> list[tuple[str, str]]:
    """On every route taking ``parameter``, another tenant's id answers exactly like an id
    that never existed; a route taking only that id answers 404."""
    routes = _routes(mine, parameter)
    unknown = uuid.uuid4().hex
    for method, template in routes:
        answer = _call(theirs, method, template, parameter, owned_id)
        nobodys = _call(theirs, method, template, parameter, unknown)
        assert answer.status_code == nobodys.status_code, (method, template, answer.text)
        # Byte for byte the same answer, once the id the caller sent is swapped.
        assert answer.text.replace(owned_id, unknown) == nobodys.text, template
        if template.count("{") == 1:  # only the id: nothing else to validate first
            assert answer.status_code == 404, (method, template)
    for method, template in routes:
        if method == "GET" and template.count("{") == 1:
            control = _call(mine, method, template, parameter, owned_id)
            assert control.status_code == 200, (template, control.text)
    return routes


def test_another_tenants_job_is_a_404_like_no_job_on_every_route(
    client: httpx.Client, other: httpx.Client, finished: dict
) -> None:
    routes = _assert_indistinguishable(client, other, "job_id", finished["id"])
    assert ("GET", "/v1/jobs/{job_id}") in routes
    assert ("POST", "/v1/jobs/{job_id}/cancel") in routes


def test_another_tenants_batch_is_a_404_like_no_batch_on_every_route(
    client: httpx.Client, other: httpx.Client
) -> None:
    tiny = {"width": 64, "height": 64, "num_inference_steps": 1}
    created = client.post("/v1/batches", json={"prompts": ["a", "b"], "parameters": tiny})
    assert created.status_code == 202, created.text
    batch = created.json()

    routes = _assert_indistinguishable(client, other, "batch_id", batch["id"])

    assert ("POST", "/v1/batches/{batch_id}/cancel") in routes
    assert client.get(f"/v1/batches/{batch['id']}").json()["status"] != "canceled"


def test_cancel_by_another_tenant_leaves_the_job_alone(
    client: httpx.Client, other: httpx.Client
) -> None:
    job = submit(client, prompt="not yours to cancel")
    refused = other.post(f"/v1/jobs/{job['id']}/cancel")
    assert refused.status_code == 404
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded"


def test_listings_show_only_ones_own_jobs(
    client: httpx.Client, other: httpx.Client, finished: dict
) -> None:
    theirs = submit(other, prompt="other tenant's job")

    mine = {j["id"] for j in client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]}
    others = {j["id"] for j in other.get("/v1/jobs", params={"limit": 100}).json()["jobs"]}

    assert finished["id"] in mine
    assert theirs["id"] not in mine
    assert others == {theirs["id"]}
    wait_job(other, theirs["id"])


# --- the bucket --------------------------------------------------------------------------------


def _strip_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _refused(url: str) -> str | None:
    """The S3 error code if the server refuses the GET (rclone answers 400 or 403), else None."""
    response = httpx.get(url, timeout=10)
    if response.status_code not in {400, 403} or "<Error>" not in response.text:
        return None
    return response.text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def test_bucket_is_private_and_signatures_are_checked(finished: dict, settings: Settings) -> None:
    image = finished["result"]["images"][0]
    url = image["url"]
    query = parse_qs(urlsplit(url).query)
    assert int(query["X-Amz-Expires"][0]) == settings.presign_ttl_s

    assert httpx.get(url, timeout=10).status_code == 200  # the control
    assert _refused(_strip_query(url))  # unsigned
    assert _refused(_strip_query(url).rsplit("/jobs/", 1)[0])  # listing the bucket
    signature = query["X-Amz-Signature"][0]
    forged = "0" * len(signature) if signature[0] != "0" else "1" * len(signature)
    assert _refused(url.replace(signature, forged)) == "SignatureDoesNotMatch"
    other_key = finished["result"]["images"][1]["key"]
    assert _refused(url.replace(image["key"], other_key)) == "SignatureDoesNotMatch"


def test_presigned_url_stops_working_when_it_expires(
    finished: dict, settings: Settings, storage: Storage
) -> None:
    key = finished["result"]["images"][0]["key"]
    signer = Storage._make_client(settings, settings.s3_endpoint_url)
    # X-Amz-Date has whole seconds: 3 s leaves at least 2 s of validity to check first.
    url = signer.generate_presigned_url(
        "get_object", Params={"Bucket": storage.bucket, "Key": key}, ExpiresIn=3
    )
    assert httpx.get(url, timeout=10).content == storage.get(key)  # valid while it lasts

    code = wait_for(lambda: _refused(url), timeout_s=15, interval_s=0.25, what="URL expiry")

    assert code == "AccessDenied"


# --- the body cap, over a real socket ----------------------------------------------------------


def test_chunked_body_over_the_cap_is_413_on_the_real_server(
    client: httpx.Client, settings: Settings
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"p" * 65536
        yield b'"}'

    response = client.post(
        "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
