"""The logs of a whole run (API and worker processes) are structured JSON lines that name the
job and tenant, and hold no API key, secret, presigned signature or prompt."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis

from cli.services import DEV_S3_SECRET, Service
from common.apikeys import ApiKeys
from tests.helpers import submit, wait_for, wait_job

pytestmark = pytest.mark.integration


def _json_lines(path: Path) -> list[dict]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_a_whole_run_logs_job_and_tenant_and_nothing_secret(
    client: httpx.Client,
    api_server: Service,
    worker: Service,
    logs: Path,
    redis_client: redis.Redis,
    auth_headers: dict[str, str],
) -> None:
    prompt = f"a confidential codename {uuid.uuid4().hex}"
    job = wait_job(client, submit(client, prompt=prompt)["id"])
    assert job["status"] == "succeeded"
    url = job["result"]["images"][0]["url"]
    assert httpx.get(url, timeout=10).status_code == 200
    revoked = ApiKeys(redis_client).create("tests")
    ApiKeys(redis_client).revoke(revoked.record.id)
    refused = httpx.get(
        f"{api_server.extra['url']}/v1/jobs/{job['id']}",
        headers={"Authorization": f"Bearer {revoked.key}"},
        params={"X-Amz-Signature": "f00d" * 16},  # a signature in a logged URL, on purpose
    )
    assert refused.status_code == 401

    api_log, worker_log = api_server.log_path, worker.log_path
    assert api_log is not None
    assert worker_log is not None
    wait_for(
        lambda: any(
            line.get("status") == 401 and line.get("job_id") == job["id"]
            for line in _json_lines(api_log)
        ),
        timeout_s=10,
        what="the refused request's access line",
    )
    everything = "\n".join(p.read_text(errors="replace") for p in logs.glob("*.log"))

    secrets = {
        "the session's API key": auth_headers["Authorization"].split()[1],
        "a revoked API key": revoked.key,
        "the S3 secret": DEV_S3_SECRET,
        "a presigned signature": parse_qs(urlsplit(url).query)["X-Amz-Signature"][0],
        "a signature in a query": "f00d" * 16,
        "the prompt": prompt.split()[-1],
    }
    leaked = [what for what, value in secrets.items() if value in everything]
    assert not leaked

    api_lines = [line for line in _json_lines(api_log) if line.get("job_id") == job["id"]]
    assert {line.get("tenant") for line in api_lines} >= {"tests"}
    assert any(line["msg"].startswith("job ") and "queued" in line["msg"] for line in api_lines)
    assert any(line["msg"].startswith("GET /v1/jobs/") for line in api_lines)
    worker_lines = [line for line in _json_lines(worker_log) if line.get("job_id") == job["id"]]
    assert worker_lines
    assert {line.get("tenant") for line in worker_lines} == {"tests"}
