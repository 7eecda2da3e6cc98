"""Following a job over its Server-Sent Events (``GET /v1/jobs/{id}/events``) in the CLI."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import httpx

BAR_WIDTH = 30
RECONNECT_S = 1.0
MAX_RECONNECTS = 30  # consecutive drops before giving up (the API is gone, not blinking)
# Longer than the server's keep-alive comments (15 s): a silent minute means a dead connection.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=60.0)


@dataclass
class Message:
    event: str
    data: Any
    id: str | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[Message]:
    """Messages of an event stream (data is JSON in sdq's streams)."""
    event, data, event_id = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield Message(event, json.loads("\n".join(data)), event_id)
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue  # a keep-alive comment
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "id":
            event_id = value


class ProgressBar:
    """One line on a terminal, redrawn in place: ``[####------] 12/30 running``."""

    def __init__(self, label: str, out: TextIO = sys.stderr) -> None:
        self.label, self.out = label, out
        self.status, self.step, self.total = "queued", 0, 0

    def update(self, message: Message) -> None:
        if message.event == "status":
            self.status = message.data["status"]
        elif message.event == "progress":
            self.step, self.total = message.data["step"], message.data["total_steps"]
        elif message.event == "job":
            self.status = message.data["status"]
            progress = message.data["progress"]
            self.step, self.total = progress["step"], progress["total_steps"]
        self.draw()

    def draw(self) -> None:
        fraction = self.step / self.total if self.total else 0.0
        filled = int(BAR_WIDTH * fraction)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        steps = f"{self.step}/{self.total}" if self.total else ""
        line = f"\r{self.label} [{bar}] {steps} {self.status}"
        print(f"{line:<{len(self.label) + BAR_WIDTH + 30}}", end="", file=self.out, flush=True)

    def close(self) -> None:
        print(file=self.out, flush=True)


def follow_job(
    http: httpx.Client,
    job_id: str,
    on_message: Callable[[Message], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Read the job's events until its final ``job`` event; reconnect with Last-Event-ID."""
    last_id: str | None = None
    drops = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with http.stream(
                "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=STREAM_TIMEOUT
            ) as response:
                if response.status_code < 500:
                    response.raise_for_status()  # 4xx: no retry can help
                for message in parse_sse(response.iter_lines()):
                    drops = 0
                    last_id = message.id or last_id
                    on_message(message)
                    if message.event == "job":
                        return message.data
        except (httpx.TransportError, httpx.RemoteProtocolError):
            pass
        drops += 1
        if drops > MAX_RECONNECTS:
            raise RuntimeError(f"lost the event stream of job {job_id}")
        sleep(RECONNECT_S)
