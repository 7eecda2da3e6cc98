"""A real HTTP webhook receiver on loopback for tests: records every request, answers as told.

Each path answers from its script, one entry per request, then 200: a status, headers, or a
hang (held until the test releases it, so "still hanging" is a fact the test can check).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers import wait_for


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: threading.Event | None = None  # answer only once this is set
    drip_s: float = 0.0  # send the status line a byte at a time, this far apart


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    sni: str | None = None


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = defaultdict(list)
        self.requests: list[Request] = []
        self.in_flight: dict[str, int] = defaultdict(int)
        self._sni: dict[int, str | None] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            tls.sni_callback = self._remember_sni
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _remember_sni(self, sock: ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        self._sni[id(sock)] = name

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path].extend(replies)

    def received(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int, timeout_s: float = 30) -> list[Request]:
        return wait_for(
            lambda: (got := self.received(path)) and len(got) >= count and got,
            timeout_s=timeout_s,
            what=f"{count} requests to {path}",
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        path = handler.path
        with self._lock:
            self.requests.append(
                Request(
                    path,
                    {k.lower(): v for k, v in handler.headers.items()},
                    body,
                    time.time(),
                    self._sni.get(id(handler.connection)),
                )
            )
            script = self._scripts[path]
            reply = script.pop(0) if script else Reply()
            self.in_flight[path] += 1
        try:
            if reply.hang is not None:
                reply.hang.wait(timeout=120)
            if reply.drip_s:
                for byte in f"HTTP/1.1 {reply.status} OK\r\n".encode():
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                    time.sleep(reply.drip_s)
                handler.wfile.write(b"Content-Length: 0\r\n\r\n")
                return
            handler.send_response(reply.status)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        except OSError:
            pass  # the client gave up (its timeout): fine for a receiver under test
        finally:
            with self._lock:
                self.in_flight[path] -= 1
