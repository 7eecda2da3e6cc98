"""Batch operations behind ``/v1/batches``: read the rows, check them all, then fan out.

Every row is checked (fields, sizes, content policy) before anything is stored, so a bad row
is a 4xx naming its row number and nothing is enqueued. Then each row becomes an ordinary
job on the batch queue, tagged with the batch id.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api import admission, webhooks
from api.deps import Services
from api.errors import ApiError, describe_validation
from common import keys, metrics
from common.batches import BatchNotFound, BatchRecord, BatchStore, predictions_key, results_key
from common.jobstore import fingerprint, new_job_id
from common.schemas import (
    MAX_METADATA_ITEMS,
    MAX_SEED,
    Dimension,
    JobCreate,
    JobRequest,
    JobStatus,
    MetadataKey,
    MetadataValue,
    OutputFormat,
    Prompt,
    Scheduler,
    WebhookSpec,
)
from common.storage import Storage

log = logging.getLogger(__name__)

FANOUT_CHUNK = 500  # jobs stored, listed and sent per step of the fan-out

JSONL_TYPES = {"application/jsonl", "application/x-ndjson", "application/x-jsonlines"}


class BatchParameters(BaseModel):
    """Generation parameters for every row of a batch; a row may set its own."""

    model_config = ConfigDict(extra="forbid")

    negative_prompt: Prompt | None = Field(None, description="As in POST /v1/jobs")
    width: Dimension | None = Field(None, description="Pixels, 64-1024, a multiple of 8")
    height: Dimension | None = Field(None, description="Pixels, 64-1024, a multiple of 8")
    num_inference_steps: int | None = Field(None, ge=1, le=150, description="Denoising steps")
    guidance_scale: float | None = Field(
        None, ge=0, le=30, allow_inf_nan=False, description="Classifier-free guidance, 0-30"
    )
    scheduler: Scheduler | None = Field(None, description="Sampler")
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Shared: row n (from 0) uses seed + n. In a row: that row's seed.",
    )
    output_format: OutputFormat | None = Field(None, description="Encoding of the images")


class BatchRow(BatchParameters):
    """One row: a prompt and, optionally, its own parameters."""

    prompt: Prompt


ROW_FIELDS = frozenset(BatchRow.model_fields)


class BatchOptions(BaseModel):
    """What a batch's rows share: generation parameters and metadata."""

    model_config = ConfigDict(extra="forbid")

    parameters: BatchParameters = Field(
        default_factory=BatchParameters, description="Parameters every row shares"
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA_ITEMS, description="Echoed back"
    )
    webhook: WebhookSpec | None = Field(
        None, description="Signed POST of batch.completed when every job has ended"
    )

    @field_validator("webhook")
    @classmethod
    def _batch_webhook(cls, webhook: WebhookSpec | None) -> WebhookSpec | None:
        return webhook.for_batch() if webhook is not None else None


class BatchCreate(BatchOptions):
    """A batch as JSON: the prompts, the parameters they share, and metadata."""

    prompts: list[Any] = Field(
        min_length=1,
        description=f"1-{keys.BATCH_MAX_ROWS} rows: a prompt string, or an object with "
        "'prompt' and any of the parameters (they override the shared ones)",
    )


class BatchFile(BaseModel):
    key: str = Field(description="Object key in the bucket")
    url: str = Field(description="Presigned GET URL")
    expires_at: datetime = Field(description="When the URL stops working")


class BatchResults(BaseModel):
    results_jsonl: BatchFile = Field(description="One JSON object per row, in row order")
    predictions_csv: BatchFile = Field(
        description="row, prompt, status, image_key, image_url, seed, nsfw_content_detected, "
        "error, job_id"
    )


class BatchPublic(BaseModel):
    """A batch as clients see it."""

    id: str = Field(description="128 random bits, hex")
    status: Literal["submitting", "in_progress", "canceling", "completed", "canceled", "failed"] = (
        Field(description="completed/canceled once every job ended and the manifest is written")
    )
    created_at: datetime = Field(description="When it was submitted")
    finished_at: datetime | None = Field(None, description="When its last job ended")
    total: int = Field(description="Rows, one job each")
    counts: dict[str, int] = Field(description="Jobs per status")
    fraction_done: float = Field(description="Jobs that ended / total, 0.0-1.0")
    metadata: dict[str, str] = Field(default_factory=dict, description="As submitted")
    webhook: WebhookSpec | None = Field(None, description="Where batch.completed is sent")
    error: str | None = Field(None, description="Why the batch could not be submitted")
    results: BatchResults | None = Field(None, description="The manifest, once finished")
    links: dict[str, str] = Field(default_factory=dict, description="Related paths")


@dataclass(frozen=True)
class RawRow:
    """A row as read from the request: its number (from 1), its line in a file, its value."""

    number: int
    line: int | None
    value: Any


# --- reading rows ---------------------------------------------------------------------------


def too_many_rows() -> ApiError:
    return ApiError(
        413,
        "too_many_rows",
        f"a batch holds at most {keys.BATCH_MAX_ROWS} rows; split it into several batches",
        details={"limit": keys.BATCH_MAX_ROWS},
    )


def row_error(row: RawRow, message: str, details: list[dict[str, Any]] | None = None) -> ApiError:
    where = f"row {row.number}" + (f" (line {row.line})" if row.line is not None else "")
    return ApiError(
        422,
        "validation_error",
        f"{where}: {message}",
        details={"row": row.number, "line": row.line, "errors": details or []},
    )


def json_rows(prompts: list[Any]) -> list[RawRow]:
    if len(prompts) > keys.BATCH_MAX_ROWS:
        raise too_many_rows()
    return [RawRow(n, None, value) for n, value in enumerate(prompts, start=1)]


def _limited(rows: Iterator[RawRow]) -> list[RawRow]:
    found: list[RawRow] = []
    for row in rows:
        if len(found) == keys.BATCH_MAX_ROWS:
            raise too_many_rows()
        found.append(row)
    if not found:
        raise ApiError(422, "validation_error", "the file has no rows")
    return found


def csv_rows(text: str) -> list[RawRow]:
    """Rows of a CSV file with a header line naming a ``prompt`` column."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if "prompt" not in header:
        raise ApiError(
            422,
            "validation_error",
            f"the CSV file needs a header line with a 'prompt' column; its columns: {header}",
        )
    # A nameless column is a pandas index (DataFrame.to_csv); it is ignored.
    unknown = sorted(c for c in set(header) - ROW_FIELDS if c.strip())
    if unknown:
        raise ApiError(
            422,
            "validation_error",
            f"unknown CSV columns {unknown}; known: {sorted(ROW_FIELDS)}",
        )

    def rows() -> Iterator[RawRow]:
        for number, record in enumerate(reader, start=1):
            row = RawRow(number, reader.line_num, None)
            if None in record:
                raise row_error(row, f"more cells than the header's {len(header)} columns")
            # Empty cells take the shared parameters.
            cells = {k: v for k, v in record.items() if k in ROW_FIELDS and v not in (None, "")}
            yield RawRow(number, reader.line_num, cells)

    try:
        return _limited(rows())
    except csv.Error as exc:
        raise ApiError(422, "validation_error", f"the CSV file is malformed: {exc}") from exc


def jsonl_rows(text: str) -> list[RawRow]:
    """Rows of a JSON Lines file: one prompt string or row object per line; blank lines skip."""

    def rows() -> Iterator[RawRow]:
        number = 0
        for line, content in enumerate(text.splitlines(), start=1):
            if not content.strip():
                continue
            number += 1
            try:
                value = json.loads(content)
            except json.JSONDecodeError as exc:
                raise row_error(RawRow(number, line, None), f"not JSON: {exc.msg}") from exc
            yield RawRow(number, line, value)

    return _limited(rows())


def file_rows(data: bytes, filename: str | None, content_type: str | None) -> list[RawRow]:
    """Rows of an uploaded CSV or JSONL file (by extension, then type, then first byte)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(422, "validation_error", "the file is not UTF-8 text") from exc
    name = (filename or "").lower()
    media = (content_type or "").split(";")[0].strip().lower()
    if name.endswith((".jsonl", ".ndjson")) or media in JSONL_TYPES:
        return jsonl_rows(text)
    if name.endswith(".csv") or media == "text/csv":
        return csv_rows(text)
    return jsonl_rows(text) if text.lstrip().startswith(("{", '"')) else csv_rows(text)


def parse_json_field(value: str | None, name: str) -> dict[str, Any]:
    """A form field holding a JSON object (``parameters``, ``metadata``)."""
    if value is None or not value.strip():
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "validation_error", f"{name}: not JSON: {exc.msg}") from exc
    if not isinstance(parsed, dict):
        raise ApiError(422, "validation_error", f"{name}: must be a JSON object")
    return parsed


def upload_options(
    parameters: str | None, metadata: str | None, webhook: str | None = None
) -> BatchOptions:
    """The shared parameters, metadata and webhook of an upload (JSON form fields), checked."""
    try:
        return BatchOptions(
            parameters=parse_json_field(parameters, "parameters"),
            metadata=parse_json_field(metadata, "metadata"),
            webhook=parse_json_field(webhook, "webhook") or None,
        )
    except ValidationError as exc:
        message, details = describe_validation(list(exc.errors()))
        raise ApiError(422, "validation_error", message, details=details) from exc


# --- checking rows --------------------------------------------------------------------------


def build_jobs(rows: list[RawRow], shared: BatchParameters) -> list[JobCreate]:
    """Each row as a job body, shared parameters under its own; 422 naming the first bad row."""
    base = shared.model_dump(exclude_none=True)
    bodies = []
    for index, row in enumerate(rows):
        value = {"prompt": row.value} if isinstance(row.value, str) else row.value
        if not isinstance(value, dict):
            raise row_error(row, "expected a prompt string or an object with a 'prompt'")
        try:
            own = BatchRow.model_validate(value).model_dump(exclude_none=True)
            fields = {**base, **own}
            if "seed" not in own and shared.seed is not None:
                fields["seed"] = (shared.seed + index) % (MAX_SEED + 1)
            bodies.append(JobCreate.model_validate(fields))
        except ValidationError as exc:
            message, details = describe_validation(list(exc.errors()))
            raise row_error(row, message, details) from exc
    return bodies


def admit_rows(services: Services, tenant: str, requests: list[JobRequest]) -> None:
    """Size caps per row and the content policy over all prompts, with row numbers."""
    for number, request in enumerate(requests, start=1):
        try:
            admission.check_size(request, services.settings)
        except ApiError as exc:
            raise ApiError(
                exc.status,
                exc.code,
                f"row {number}: {exc.message}",
                details={"row": number, "errors": exc.details},
            ) from exc
    try:
        services.content_policy.enforce([r.prompt[0] for r in requests], tenant)
    except ApiError as exc:
        index = exc.details.get("prompt_index") if isinstance(exc.details, dict) else None
        if index is None:
            raise
        message = exc.message.replace(f"the prompt {index} ", "the prompt ")
        raise ApiError(
            exc.status, exc.code, f"row {index + 1}: {message}", details={"row": index + 1}
        ) from exc
    settings = services.settings
    queue = settings.batch_queue_name
    if services.store.queue_depth(queue) + len(requests) > settings.max_batch_queued_total:
        raise ApiError(
            429,
            "queue_full",
            f"the batch queue holds at most {settings.max_batch_queued_total} jobs; "
            "retry when some have run",
            details={"limit": settings.max_batch_queued_total},
            headers={"Retry-After": str(settings.queue_full_retry_after_s)},
        )


# --- operations -----------------------------------------------------------------------------


def batch_store(services: Services) -> BatchStore:
    return BatchStore(services.store, services.storage, ttl_s=services.settings.job_ttl_s)


def submit(
    services: Services,
    tenant: str,
    bodies: list[JobCreate],
    metadata: dict[str, str],
    idempotency_key: str | None = None,
    webhook: WebhookSpec | None = None,
) -> BatchRecord:
    """Check every row, then store the batch and fan out one job per row on the batch queue.

    If the broker or Redis fails half-way, the jobs already made are canceled and the batch
    ends ``failed``: a batch runs whole or not at all. With an ``Idempotency-Key`` seen before
    (and the same rows), the earlier batch is returned and nothing new is made."""
    requests = [body.normalised() for body in bodies]
    admit_rows(services, tenant, requests)
    webhooks.check(services, tenant, webhook)
    batches = batch_store(services)
    batch_id = new_job_id()
    idem = keys.batch_idempotency(tenant, idempotency_key) if idempotency_key else None
    if idem is not None:
        described = {"rows": [b.model_dump(mode="json") for b in bodies], "metadata": metadata}
        if webhook is not None:
            described["webhook"] = webhook.model_dump(mode="json")
        digest = fingerprint(described)
        earlier = _claim_key(services, idem, batch_id, digest)
        if earlier is not None:
            return batches.get(earlier)
    try:
        _fan_out(services, tenant, batch_id, requests, metadata, webhook)
    except Exception:
        if idem is not None:
            services.store.redis.delete(idem)  # a retry may try again
        raise
    return batches.get(batch_id)


def _claim_key(services: Services, idem: str, batch_id: str, digest: str) -> str | None:
    """Reserve the Idempotency-Key for this batch, or return the batch it already names."""
    ttl_s = services.settings.idempotency_ttl_s
    redis = services.store.redis
    if redis.set(idem, f"{batch_id} {digest}", nx=True, ex=ttl_s):
        return None
    earlier, _, earlier_digest = (redis.get(idem) or "").partition(" ")
    if earlier_digest != digest:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different batch",
            details={"batch_id": earlier},
        )
    return earlier


def _fan_out(
    services: Services,
    tenant: str,
    batch_id: str,
    requests: list[JobRequest],
    metadata: dict[str, str],
    webhook: WebhookSpec | None = None,
) -> None:
    store, batches = services.store, batch_store(services)
    queue = services.settings.batch_queue_name
    batches.create(batch_id, tenant=tenant, total=len(requests), metadata=metadata, webhook=webhook)
    made: list[str] = []
    try:
        for start in range(0, len(requests), FANOUT_CHUNK):
            ids = [
                store.create(request, tenant=tenant, queue=queue, batch_id=batch_id)[0]
                for request in requests[start : start + FANOUT_CHUNK]
            ]
            made.extend(ids)
            batches.add_jobs(batch_id, ids)
            for job_id in ids:
                services.queue.enqueue(job_id, queue)
            store.mark_dispatched(ids)
    except Exception:
        log.exception("batch %s: fan-out failed after %d jobs", batch_id, len(made))
        with contextlib.suppress(Exception):
            for job_id in made:
                store.cancel(job_id)
            batches.mark_failed(batch_id, "the batch could not be queued; nothing of it runs")
        raise
    batches.mark_submitted(batch_id)
    metrics.JOBS_SUBMITTED.labels(queue=queue).inc(len(made))
    log.info("batch %s: %d jobs queued on %s", batch_id, len(made), queue)


def load(services: Services, tenant: str, batch_id: str) -> BatchRecord:
    try:
        return batch_store(services).get(batch_id, tenant=tenant)
    except BatchNotFound as exc:
        raise ApiError(404, "batch_not_found", f"no batch with id {batch_id!r}") from exc


def cancel(services: Services, tenant: str, batch_id: str) -> BatchRecord:
    """Cancel the queued jobs of a batch at once, interrupt the running ones."""
    batch = load(services, tenant, batch_id)
    if batch.status == "submitting":
        raise ApiError(409, "batch_submitting", "the batch is still being submitted")
    if batch.finished_at is not None and not batch.cancel_requested:
        raise ApiError(409, "batch_finished", f"the batch already ended: {batch.status}")
    batches = batch_store(services)
    batches.request_cancel(batch_id)
    for job_id in batches.job_ids(batch_id):
        outcome = services.store.cancel(job_id)
        if outcome == "canceled":  # it never reached a worker, which would have counted it
            metrics.job_finished(services.settings.batch_queue_name, JobStatus.CANCELED)
    return batches.get(batch_id)


def view(services: Services, batch: BatchRecord) -> BatchPublic:
    """The batch with its counts (finishing it if every job ended) and fresh manifest URLs."""
    return batch_public(batch_store(services), services.storage, batch)


def batch_public(batches: BatchStore, storage: Storage, batch: BatchRecord) -> BatchPublic:
    """:func:`view` from the stores alone (the webhook worker renders batch.completed so)."""
    batch, counts = batches.refresh(batch)
    ended = sum(n for status, n in counts.items() if JobStatus(status).is_terminal)
    results = None
    if batch.finished_at is not None and not batch.error:
        results = BatchResults(
            results_jsonl=_file(storage, results_key(batch.id)),
            predictions_csv=_file(storage, predictions_key(batch.id)),
        )
    base = f"/v1/batches/{batch.id}"
    return BatchPublic(
        id=batch.id,
        status=batch.status,
        created_at=_when(batch.created_at),
        finished_at=_when(batch.finished_at) if batch.finished_at else None,
        total=batch.total,
        counts=counts,
        fraction_done=round(ended / batch.total, 4) if batch.total else 1.0,
        metadata=batch.metadata,
        webhook=batch.webhook,
        error=batch.error,
        results=results,
        links={"self": base, "cancel": f"{base}/cancel"},
    )


def _file(storage: Storage, key: str) -> BatchFile:
    url, expires_at = storage.presign(key)
    return BatchFile(key=key, url=url, expires_at=expires_at)


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
