"""Encoding and storing off the generation thread, so the GPU starts the next batch at once."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class Uploader:
    """A bounded pool: at most ``max_in_flight`` jobs wait to be stored; past that, the
    generation thread waits (back-pressure) instead of piling images up in memory."""

    def __init__(self, threads: int, max_in_flight: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="upload")
        self._max = max_in_flight
        self._in_flight = 0
        self._changed = threading.Condition()

    def submit(self, work: Callable[[], None]) -> None:
        # The pool thread runs with the caller's context: log lines keep the job id and tenant.
        context = contextvars.copy_context()
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight < self._max)
            self._in_flight += 1

        def run() -> None:
            try:
                context.run(work)
            finally:
                with self._changed:
                    self._in_flight -= 1
                    self._changed.notify_all()

        self._pool.submit(run)

    def wait_idle(self) -> None:
        """Until everything submitted so far is stored."""
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight == 0)

    def drain(self) -> None:
        """Finish every pending upload and stop (worker shutdown)."""
        self.wait_idle()
        self._pool.shutdown(wait=True)
