"""``GET /v1/jobs/{id}/events``: Server-Sent Events from the job's Redis stream, resumable."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from api.events import entry_event, format_event
from tests.helpers import submit, wait_job

pytestmark = pytest.mark.integration


def read_events(
    client: httpx.Client, job_id: str, last_event_id: str | None = None
) -> list[dict[str, Any]]:
    """Every event of the stream until the server closes it (it must, at a terminal state)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        message: dict[str, Any] = {}
        for line in resp.iter_lines():
            if not line:
                if "data" in message:
                    message["data"] = json.loads(message["data"])
                    events.append(message)
                message = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                message[field] = value.removeprefix(" ")
    return events


def test_a_job_streams_status_progress_and_the_final_job(client: httpx.Client) -> None:
    job = submit(client, prompt="streamed", num_inference_steps=6)

    events = read_events(client, job["id"])

    names = [e["event"] for e in events]
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert names[-1] == "job"
    assert names.index("progress") > statuses.index("running")
    steps = [e["data"]["step"] for e in events if e["event"] == "progress"]
    assert steps == sorted(steps)
    assert steps[-1] == 6
    assert all(e["data"]["total_steps"] == 6 for e in events if e["event"] == "progress")
    final = events[-1]["data"]
    assert final["id"] == job["id"]
    assert final["status"] == "succeeded"
    assert final["result"]["images"][0]["url"].startswith("http")
    assert final == {**client.get(f"/v1/jobs/{job['id']}").json(), "result": final["result"]}
    ids = [e["id"] for e in events]
    assert ids[-1] == ids[-2]  # the job event carries the id of the terminal status event
    assert len(set(ids[:-1])) == len(ids) - 1  # otherwise one id per stream entry


def test_last_event_id_resumes_after_that_event(client: httpx.Client) -> None:
    job = submit(client, prompt="resumed", num_inference_steps=4)
    everything = read_events(client, job["id"])
    running = next(e for e in everything if e["data"].get("status") == "running")

    resumed = read_events(client, job["id"], last_event_id=running["id"])

    after_running = everything[everything.index(running) + 1 :]
    assert [e["id"] for e in resumed] == [e["id"] for e in after_running]
    assert [e["event"] for e in resumed] == [e["event"] for e in after_running]


def test_resuming_after_the_end_gives_the_job_and_closes(client: httpx.Client) -> None:
    job = wait_job(client, submit(client, prompt="already done")["id"])
    last = read_events(client, job["id"])[-1]

    again = read_events(client, job["id"], last_event_id=last["id"])

    assert [e["event"] for e in again] == ["job"]
    assert again[0]["data"]["status"] == "succeeded"


def test_a_canceled_job_ends_its_stream(client: httpx.Client, settings, auth_headers) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    # A queue nobody consumes: the job stays queued until it is canceled.
    app = create_app(settings.model_copy(update={"queue": "sdq.events-unconsumed"}))
    with TestClient(app, headers=auth_headers) as http:
        job = submit(http, prompt="never runs")
        http.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status()
        events = read_events(client, job["id"])

    assert [(e["event"], e["data"].get("status")) for e in events] == [
        ("status", "queued"),
        ("status", "canceled"),
        ("job", "canceled"),
    ]


def test_unknown_job_is_404_and_a_bad_last_event_id_is_422(client: httpx.Client) -> None:
    missing = client.get("/v1/jobs/0123456789abcdef0123456789abcdef/events")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "job_not_found"

    job = submit(client, prompt="bad header")
    bad = client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "x; DROP"})
    assert bad.status_code == 422


def test_stream_entries_become_sse_messages() -> None:
    assert entry_event({"type": "progress", "step": "3", "total_steps": "4"}) == (
        "progress",
        {"step": 3, "total_steps": 4, "fraction": 0.75},
    )
    assert entry_event({"type": "status", "status": "running", "attempt": "2"}) == (
        "status",
        {"status": "running", "attempt": 2},
    )
    assert format_event("status", {"status": "queued"}, "1-0") == (
        'id: 1-0\nevent: status\ndata: {"status":"queued"}\n\n'
    )
