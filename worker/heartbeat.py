"""Worker heartbeats: what ``GET /v1/workers`` lists."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from common import keys

log = logging.getLogger(__name__)


class Heartbeat:
    """Writes this worker's state to Redis every interval, and at once on a change."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        interval_s: float,
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        self._redis = client
        self.name = name
        self._interval_s = interval_s
        self._snapshot = snapshot
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def poke(self) -> None:
        """Beat now (state changed)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        try:
            self._redis.delete(keys.worker(self.name))
            self._redis.zrem(keys.workers(), self.name)
        except redis.RedisError:
            log.warning("could not remove heartbeat of %s", self.name)

    def beat(self) -> None:
        now = time.time()
        fields = {k: "" if v is None else str(v) for k, v in self._snapshot().items()}
        fields.update(name=self.name, last_beat=repr(now))
        ttl = max(1, round(self._interval_s * keys.HEARTBEAT_MISSES))
        pipe = self._redis.pipeline()
        pipe.delete(keys.worker(self.name))
        pipe.hset(keys.worker(self.name), mapping=fields)
        pipe.expire(keys.worker(self.name), ttl)
        pipe.zadd(keys.workers(), {self.name: now})
        pipe.execute()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
