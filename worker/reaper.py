"""The reaper: no job stays 'running' after its worker vanished, none stays queued past its
deadline, and none waits for a message its submitter died before publishing. Every worker
process runs one; a Redis lock lets one of them act per round."""

from __future__ import annotations

import logging
import secrets
import threading
import time

import redis

from common import keys
from common.jobstore import JobNotFound, JobStore
from common.queue import JobQueue
from common.schemas import JobStatus

log = logging.getLogger(__name__)


class Reaper:
    def __init__(
        self,
        store: JobStore,
        queue: JobQueue,
        *,
        interval_s: float,
        lease_ttl_s: float,
        max_attempts: int,
    ) -> None:
        self._store, self._queue = store, queue
        self._interval_s, self._lease_ttl_s = interval_s, lease_ttl_s
        self._max_attempts = max_attempts
        self._token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                if self._store.redis.set(
                    keys.reaper_lock(), self._token, nx=True, px=int(self._interval_s * 900)
                ):
                    self.reap_once()
            except redis.RedisError as exc:
                log.warning("reaper round skipped: %s", exc)

    def _dispatch_lost(self) -> list[str]:
        """Publish the message of queued jobs whose submitter died before publishing it."""
        sent = []
        for job_id in self._store.undispatched_since(time.time() - keys.DISPATCH_GRACE_S):
            try:
                record = self._store.get(job_id)
            except JobNotFound:
                record = None
            if record is not None and record.status is JobStatus.QUEUED:
                self._queue.enqueue(job_id, record.queue)
                sent.append(job_id)
            self._store.mark_dispatched([job_id])
        return sent

    def reap_once(self) -> dict[str, list[str]]:
        """One round; returns what it did, by outcome."""
        done: dict[str, list[str]] = {"expired": self._store.expire_overdue()}
        done["dispatched"] = self._dispatch_lost()
        # A lease outlives its last renewal by lease_ttl_s: only older jobs can be orphans.
        for job_id in self._store.running_since(time.time() - self._lease_ttl_s):
            if self._store.lease_ttl_ms(job_id) > 0:
                continue  # its worker is alive and renewing
            try:
                queue = self._store.get(job_id).queue
            except JobNotFound:
                queue = ""  # the record expired; requeue_orphan drops it from the index
            if queue:
                # The message goes out first: if this process dies next, nothing is lost, and a
                # message that finds the job running or finished is dropped by the runner.
                self._queue.enqueue(job_id, queue)
            outcome = self._store.requeue_orphan(job_id, max_attempts=self._max_attempts)
            done.setdefault(outcome, []).append(job_id)
        for outcome in ("expired", "dispatched", "requeued", "failed"):
            if done.get(outcome):
                log.warning("reaper: %s %s", outcome, ", ".join(done[outcome]))
        return done
