"""``sdq submit --wait`` follows the job's events with a progress bar, and resumes after drops."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cli.events import Message, ProgressBar, follow_job, parse_sse
from cli.services import Service, sdq_command

STREAM = [
    'id: 1-0\nevent: status\ndata: {"status":"queued"}\n\n',
    'id: 2-0\nevent: status\ndata: {"status":"running","attempt":1}\n\n',
    ": keepalive\n\n",
    'id: 3-0\nevent: progress\ndata: {"step":1,"total_steps":2,"fraction":0.5}\n\n',
    'id: 4-0\nevent: progress\ndata: {"step":2,"total_steps":2,"fraction":1.0}\n\n',
    'id: 5-0\nevent: status\ndata: {"status":"succeeded"}\n\n',
    'id: 5-0\nevent: job\ndata: {"id":"j","status":"succeeded",'
    '"progress":{"step":2,"total_steps":2,"fraction":1.0}}\n\n',
]


def test_parse_sse_reads_messages_and_skips_comments() -> None:
    messages = list(parse_sse("".join(STREAM).split("\n")))
    assert [m.event for m in messages] == [
        "status", "status", "progress", "progress", "status", "job",
    ]  # fmt: skip
    assert messages[2] == Message("progress", {"step": 1, "total_steps": 2, "fraction": 0.5}, "3-0")


def test_follow_resumes_with_last_event_id_after_a_drop() -> None:
    seen_headers: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        last = request.headers.get("last-event-id")
        seen_headers.append(last)
        if last is None:  # the first connection drops after three events
            return httpx.Response(200, text="".join(STREAM[:3]) + "id: 3-0\nevent: prog")
        start = next(i for i, chunk in enumerate(STREAM) if chunk.startswith(f"id: {last}")) + 1
        return httpx.Response(200, text="".join(STREAM[start:]))

    got: list[Message] = []
    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://sdq") as http:
        job = follow_job(http, "j", got.append, sleep=lambda _: None)

    assert job["status"] == "succeeded"
    assert seen_headers == [None, "2-0"]
    assert [m.id for m in got] == ["1-0", "2-0", "3-0", "4-0", "5-0", "5-0"]


def test_follow_gives_up_on_a_job_it_may_not_see() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "job_not_found"}})

    with (
        httpx.Client(transport=httpx.MockTransport(handler), base_url="http://sdq") as http,
        pytest.raises(httpx.HTTPStatusError),
    ):
        follow_job(http, "j", lambda _: None, sleep=lambda _: None)


def test_progress_bar_draws_steps_and_status() -> None:
    out = io.StringIO()
    bar = ProgressBar("job abc", out)
    for message in parse_sse("".join(STREAM).split("\n")):
        bar.update(message)
    bar.close()
    frames = out.getvalue().split("\r")
    assert "[###############---------------] 1/2 running" in frames[3]
    assert frames[-1].startswith("job abc [" + "#" * 30 + "] 2/2 succeeded")


@pytest.mark.integration
def test_submit_wait_shows_a_progress_bar_and_saves_the_images(
    api_server: Service,
    worker: Service,
    sdq_env: dict[str, str],
    auth_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    key = auth_headers["Authorization"].removeprefix("Bearer ")
    args = ["--api-url", api_server.extra["url"], "--out", str(tmp_path), "--steps", "4"]
    args += ["--width", "64", "--height", "64", "-n", "2"]
    done = subprocess.run(
        sdq_command("submit", "--wait", *args, "a progress bar"),
        env={**sdq_env, "SDQ_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    frames = done.stderr.split("\r")
    assert any(" running" in frame and "/4" in frame for frame in frames), done.stderr
    assert "[" + "#" * 30 + "] 4/4 succeeded" in frames[-1]
    saved = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert len(saved) == 2
    for path in saved:
        with Image.open(path) as image:
            assert image.size == (64, 64)
