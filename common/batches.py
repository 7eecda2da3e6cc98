"""Batches: many prompts fanned out to jobs, counted together, with one results manifest.

A batch is a Redis hash beside a list of its job ids in row order. Each job is an ordinary job
(same queue machinery, same worker, same job record) on the batch queue, tagged with the batch
id. When every job has ended, ``batches/<id>/results.jsonl`` and ``batches/<id>/predictions.csv``
are written to the bucket and linked from the batch.

Completion is noticed wherever a job of the batch is seen ending: the worker task after each
delivery (:meth:`BatchStore.settle`: finished, failed, interrupted, canceled while queued,
expired), the cancel route, and every read of the batch (:meth:`BatchStore.refresh`), so a
manifest is written whatever path ended the last job. Writing it twice is harmless: the
object keys are fixed and one lock makes the second writer a no-op.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from common import keys
from common.jobstore import JobRecord, JobStore, webhook_events
from common.schemas import JobStatus, WebhookSpec
from common.storage import Storage

log = logging.getLogger(__name__)

PREDICTIONS_COLUMNS = [
    "row",
    "prompt",
    "status",
    "image_key",
    "image_url",
    "seed",
    "nsfw_content_detected",
    "error",
    "job_id",
]


# KEYS: batch.  ARGV: finished_at, counts_json
# Marks the batch finished once, and in the same step queues its batch.completed webhook event
# (if it has a webhook that wants it): finished once, announced once.
_FINISH = (
    """
if redis.call('HGET', KEYS[1], 'finished_at') then return 0 end
redis.call('HSET', KEYS[1], 'finished_at', ARGV[1], 'counts', ARGV[2])
local wanted = redis.call('HGET', KEYS[1], 'webhook_events')
if wanted and string.find(wanted, ',batch.completed,', 1, true) then
  local id = redis.call('HGET', KEYS[1], 'id')
  local now = redis.call('TIME')
  redis.call('XADD', '"""
    + keys.webhook_outbox()
    + "', 'MAXLEN', '~', "
    + str(keys.WEBHOOK_OUTBOX_MAXLEN)
    + """, '*', 'kind', 'batch',
    'subject', id, 'event', 'batch.completed', 'msg', 'msg_' .. id .. '_completed',
    'at', now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
end
return 1
"""
)


def results_key(batch_id: str) -> str:
    return f"batches/{batch_id}/results.jsonl"


def predictions_key(batch_id: str) -> str:
    return f"batches/{batch_id}/predictions.csv"


@dataclass(frozen=True)
class BatchRecord:
    """A batch as stored in Redis."""

    id: str
    tenant: str
    total: int
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    submitted_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    counts: dict[str, int] | None = None  # final counts, once finished
    error: str | None = None  # why the fan-out failed, if it did
    webhook: WebhookSpec | None = None

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> BatchRecord:
        def opt_float(name: str) -> float | None:
            return float(raw[name]) if raw.get(name) else None

        return cls(
            id=raw["id"],
            tenant=raw["tenant"],
            total=int(raw["total"]),
            created_at=float(raw["created_at"]),
            metadata=json.loads(raw.get("metadata") or "{}"),
            submitted_at=opt_float("submitted_at"),
            finished_at=opt_float("finished_at"),
            cancel_requested=raw.get("cancel_requested") == "1",
            counts=json.loads(raw["counts"]) if raw.get("counts") else None,
            error=raw.get("error") or None,
            webhook=WebhookSpec.model_validate_json(raw["webhook"]) if raw.get("webhook") else None,
        )

    @property
    def status(self) -> str:
        """failed (never fully submitted), submitting, in_progress, canceling, finalizing (every
        job ended, manifest not written yet), completed or canceled."""
        if self.error:
            return "failed"
        if self.finished_at is not None:
            return "canceled" if self.cancel_requested else "completed"
        if self.submitted_at is None:
            return "submitting"
        return "canceling" if self.cancel_requested else "in_progress"


class BatchNotFound(LookupError):
    """No such batch (or not this tenant's)."""


class BatchStore:
    """Reads and writes batches; the jobs themselves live in the :class:`JobStore`."""

    def __init__(self, store: JobStore, storage: Storage, *, ttl_s: int) -> None:
        self.store = store
        self.redis = store.redis
        self.storage = storage
        self.ttl_s = ttl_s
        self._finish = self.redis.register_script(_FINISH)

    # --- create ---------------------------------------------------------------------------

    def create(
        self,
        batch_id: str,
        *,
        tenant: str,
        total: int,
        metadata: dict[str, str],
        webhook: WebhookSpec | None = None,
    ) -> BatchRecord:
        """Store a batch that is about to be fanned out (status ``submitting``)."""
        now = time.time()
        raw = {
            "id": batch_id,
            "tenant": tenant,
            "total": str(total),
            "created_at": repr(now),
            "metadata": json.dumps(metadata),
        }
        if webhook is not None:
            raw.update(webhook=webhook.model_dump_json(), webhook_events=webhook_events(webhook))
        pipe = self.redis.pipeline()
        pipe.hset(keys.batch(batch_id), mapping=raw)
        pipe.expire(keys.batch(batch_id), self.ttl_s)
        pipe.execute()
        return BatchRecord.from_hash(raw)

    def add_jobs(self, batch_id: str, job_ids: list[str]) -> None:
        """Append job ids (in row order) before their tasks are sent."""
        pipe = self.redis.pipeline()
        pipe.rpush(keys.batch_jobs(batch_id), *job_ids)
        pipe.expire(keys.batch_jobs(batch_id), self.ttl_s)
        pipe.execute()

    def mark_submitted(self, batch_id: str) -> None:
        self.redis.hset(keys.batch(batch_id), "submitted_at", repr(time.time()))

    def request_cancel(self, batch_id: str) -> None:
        self.redis.hset(keys.batch(batch_id), "cancel_requested", "1")

    def mark_failed(self, batch_id: str, error: str) -> None:
        self.redis.hset(
            keys.batch(batch_id), mapping={"error": error, "finished_at": repr(time.time())}
        )

    # --- read -----------------------------------------------------------------------------

    def get(self, batch_id: str, *, tenant: str | None = None) -> BatchRecord:
        raw = self.redis.hgetall(keys.batch(batch_id))
        if not raw or (tenant is not None and raw.get("tenant") != tenant):
            raise BatchNotFound(batch_id)
        return BatchRecord.from_hash(raw)

    def job_ids(self, batch_id: str) -> list[str]:
        return self.redis.lrange(keys.batch_jobs(batch_id), 0, -1)

    def statuses(self, job_ids: list[str]) -> list[str | None]:
        """Each job's status (None for a record that expired), in a few round trips."""
        found: list[str | None] = []
        for chunk in _chunks(job_ids, keys.BATCH_READ_CHUNK):
            pipe = self.redis.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hget(keys.job(job_id), "status")
            found.extend(pipe.execute())
        return found

    def counts(self, batch: BatchRecord) -> dict[str, int]:
        """Jobs per status; every status is present. Final counts once the batch finished."""
        if batch.counts is not None:
            return batch.counts
        return _tally(self.statuses(self.job_ids(batch.id)))

    # --- completion -----------------------------------------------------------------------

    def settle(self, job_id: str) -> bool:
        """Count a job of a batch as ended (after a delivery); write the manifest if it was the
        last. Cheap for jobs of no batch. Returns True when this call finished the batch."""
        batch_id, status = self.redis.hmget(keys.job(job_id), ["batch_id", "status"])
        if not batch_id or not status or not JobStatus(status).is_terminal:
            return False
        pipe = self.redis.pipeline()
        pipe.sadd(keys.batch_settled(batch_id), job_id)
        pipe.expire(keys.batch_settled(batch_id), self.ttl_s)
        pipe.scard(keys.batch_settled(batch_id))
        pipe.hmget(keys.batch(batch_id), ["total", "finished_at"])
        _, _, settled, (total, finished_at) = pipe.execute()
        if total is None or finished_at or settled < int(total):
            return False
        return self.finalize(batch_id)

    def refresh(self, batch: BatchRecord) -> tuple[BatchRecord, dict[str, int]]:
        """The batch and its counts; finished first if every job has ended (this covers jobs
        that ended where nobody settled them)."""
        counts = self.counts(batch)
        still = counts[JobStatus.QUEUED.value] + counts[JobStatus.RUNNING.value]
        if batch.finished_at is None and batch.submitted_at is not None and not still:
            self.finalize(batch.id)
            batch = self.get(batch.id)
            counts = self.counts(batch)
        return batch, counts

    def finalize(self, batch_id: str) -> bool:
        """Write the manifest and the final counts if every job has ended. Idempotent; False
        while a job is still queued or running, or while another process is writing it."""
        lock = self.redis.lock(
            keys.batch_lock(batch_id), timeout=keys.BATCH_FINALIZE_LOCK_S, blocking=False
        )
        if not lock.acquire():
            return False
        try:
            batch = self.get(batch_id)
            if batch.finished_at is not None:
                return False
            job_ids = self.job_ids(batch_id)
            if batch.submitted_at is None or len(job_ids) < batch.total:
                return False
            statuses = self.statuses(job_ids)
            if any(s is not None and not JobStatus(s).is_terminal for s in statuses):
                return False
            counts = self._write_manifest(batch, job_ids)
            if not self._finish(
                keys=[keys.batch(batch_id)], args=[repr(time.time()), json.dumps(counts)]
            ):
                return False  # another writer, whose lock had lapsed, finished it first
            log.info("batch %s finished: %s", batch_id, counts)
            return True
        finally:
            lock.release()

    # --- manifest -------------------------------------------------------------------------

    def _records(self, job_ids: list[str]) -> Iterator[tuple[str, JobRecord | None]]:
        for chunk in _chunks(job_ids, keys.BATCH_READ_CHUNK):
            pipe = self.redis.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hgetall(keys.job(job_id))
            for job_id, raw in zip(chunk, pipe.execute(), strict=True):
                yield job_id, JobRecord.from_hash(raw) if raw else None

    def _write_manifest(self, batch: BatchRecord, job_ids: list[str]) -> dict[str, int]:
        """results.jsonl (everything about each row) and predictions.csv (one line per row)."""
        lines: list[str] = []
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=PREDICTIONS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        statuses: list[str] = []
        for row, (job_id, record) in enumerate(self._records(job_ids), start=1):
            entry = self._row(row, job_id, record)
            statuses.append(entry["status"])
            lines.append(json.dumps(entry, ensure_ascii=False))
            image = entry["image"] or {}
            error = entry["error"]
            writer.writerow(
                {
                    "row": row,
                    "prompt": entry["prompt"],
                    "status": entry["status"],
                    "image_key": image.get("key", ""),
                    "image_url": image.get("url", ""),
                    "seed": entry["seed"] if entry["seed"] is not None else "",
                    "nsfw_content_detected": _flag(image.get("nsfw_content_detected")),
                    "error": f"{error['code']}: {error['message']}" if error else "",
                    "job_id": job_id,
                }
            )
        self.storage.put(
            results_key(batch.id), ("\n".join(lines) + "\n").encode(), "application/x-ndjson"
        )
        self.storage.put(predictions_key(batch.id), table.getvalue().encode(), "text/csv")
        return _tally(statuses)

    def _row(self, row: int, job_id: str, record: JobRecord | None) -> dict[str, Any]:
        if record is None:  # the job record outlived its TTL: nothing is left to report
            return {
                "row": row,
                "job_id": job_id,
                "prompt": None,
                "status": JobStatus.EXPIRED.value,
                "seed": None,
                "image": None,
                "error": {"code": "record_expired", "message": "the job record expired"},
                "request": None,
            }
        image = None
        if record.status is JobStatus.SUCCEEDED and record.result and record.result.images:
            first = record.result.images[0]
            url, expires_at = self.storage.presign(first.key)
            image = first.model_dump(mode="json") | {
                "url": url,
                "expires_at": expires_at.isoformat(),
            }
        return {
            "row": row,
            "job_id": job_id,
            "prompt": record.request.prompt[0],
            "status": record.status.value,
            "seed": record.request.seed,
            "image": image,
            "error": record.error.model_dump() if record.error else None,
            "request": record.request.model_dump(mode="json"),
        }


def _tally(statuses: list[str | None]) -> dict[str, int]:
    """Every status with its count; a job record gone past its TTL counts as expired."""
    found = Counter(s or JobStatus.EXPIRED.value for s in statuses)
    return {status.value: found.get(status.value, 0) for status in JobStatus}


def _flag(value: bool | None) -> str:
    return "" if value is None else str(value)  # "True"/"False", as /score writes them


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
