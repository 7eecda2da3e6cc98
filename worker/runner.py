"""Runs delivered jobs: lease, micro-batch, generate, then store and finish off the GPU thread.

Safe to run twice for one job: a job is only ever run under its lease, objects have
deterministic keys, and the job store refuses to change a finished job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
from botocore.exceptions import BotoCoreError, ClientError
from celery.exceptions import SoftTimeLimitExceeded

from common import storage as keys_s3
from common.jobstore import JobRecord, JobStore, StartOutcome
from common.logs import log_context
from common.schemas import ImageResult, JobError, JobResult, JobStatus, Timings
from common.settings import Settings
from common.storage import Storage
from worker.batches import settle as settle_batch
from worker.encode import encode_image, extension
from worker.faults import Fault, fault_for
from worker.pipeline import Generation, PipelineHolder, batch_key
from worker.uploads import Uploader

log = logging.getLogger(__name__)

COMPANION_SCAN = 32  # queued jobs looked at when forming a batch


class JobCanceled(Exception):
    """Every job of the batch was canceled; raised from the step callback to stop early."""


class LeaseLost(Exception):
    """Other workers may now own every job of the batch; stop without writing anything."""


class StorageUnavailable(Exception):
    """Uploads kept failing for longer than settings.storage_retry_s."""


def retry_until(
    deadline_s: float, action: Callable[[], object], errors: tuple[type, ...], what: str
):
    """Run ``action``, retrying with capped exponential backoff until ``deadline_s`` passes."""
    deadline = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        try:
            return action()
        except errors as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class LeaseKeeper:
    """Renews a job's lease in the background from start until the job is finished."""

    def __init__(self, store: JobStore, job_id: str, token: str, ttl_s: float) -> None:
        self._store, self._job_id, self._token, self._ttl_s = store, job_id, token, ttl_s
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _renew(self) -> None:
        while not self._stop.wait(self._ttl_s / 3):
            try:
                if not self._store.renew_lease(self._job_id, self._token, self._ttl_s):
                    self.lost = True
                    log.warning("lease on job %s lost", self._job_id)
                    return
            except redis.RedisError:  # a blip: the lease has slack for two more tries
                log.warning("lease renewal for job %s failed", self._job_id, exc_info=True)


@dataclass
class Claim:
    """One job this worker holds the lease of, while it runs."""

    record: JobRecord
    outcome: StartOutcome
    lease: LeaseKeeper
    started: float = field(default_factory=time.time)
    active: bool = True  # False once canceled or lost: its images are not stored
    handed_off: bool = False  # its images went to the upload threads, which finish it
    timings: Timings = field(default_factory=Timings)

    @property
    def id(self) -> str:
        return self.record.id


class StepReporter:
    """The per-step hook of a batch: throttled progress, per-job cancel and lease checks."""

    def __init__(
        self, runner: JobRunner, claims: list[Claim], interval_s: float, faults: dict[str, Fault]
    ) -> None:
        self._runner, self._claims = runner, claims
        self._interval_s, self._faults = interval_s, faults
        self._last_write = 0.0

    def __call__(self, step: int, total: int) -> None:
        for claim in self._claims:
            fault = self._faults.get(claim.id)
            if fault is not None:
                fault.maybe_strike(step, claim.outcome.attempts)
            if claim.active and claim.lease.lost:
                claim.active = False  # someone else may be running it now: write nothing
        active = [c for c in self._claims if c.active]
        if not active:
            raise LeaseLost("every job of the batch")
        now = time.monotonic()
        write = step >= total or now - self._last_write >= self._interval_s
        if write:
            self._last_write = now
        try:
            flags = self._runner.store.progress_many(
                [c.id for c in active], step, total, write=write
            )
        except redis.RedisError as exc:
            # Progress is best effort: a Redis blip must not cost the images.
            log.warning("progress not recorded: %s", exc)
            return
        for claim, canceled in zip(active, flags, strict=True):
            if canceled:
                claim.active = False
                self._runner.finish(claim, JobStatus.CANCELED)
        if not any(c.active for c in self._claims):
            raise JobCanceled


@dataclass
class WorkerState:
    """What the heartbeat reports about this worker process."""

    name: str
    current_job: str | None = None
    jobs_done: int = 0


class JobRunner:
    """Executes deliveries of the generate task in one worker process."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        holder: PipelineHolder,
        state: WorkerState,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.holder = holder
        self.state = state
        self._on_change = on_change
        self._count_lock = threading.Lock()
        self.uploader = Uploader(settings.upload_threads, max_in_flight=2 * settings.max_batch)
        self._puts = ThreadPoolExecutor(max_workers=8, thread_name_prefix="put")

    def run(self, job_id: str) -> None:
        lead = self._claim(job_id)
        if lead is None:
            return
        claims = [lead]
        self.state.current_job = job_id
        self._on_change()
        try:
            self._add_companions(claims)
            self._generate(claims)
        except BaseException:
            # Something unforeseen (Redis gone mid-batch, the soft shutdown): stop renewing the
            # leases of jobs nobody will finish, so the reaper hands them back.
            for claim in claims:
                if claim.active and not claim.handed_off:
                    claim.lease.stop()
            raise
        finally:
            self.state.current_job = None
            self._on_change()

    # --- taking jobs ------------------------------------------------------------------------

    def _claim(self, job_id: str) -> Claim | None:
        """Take the job under a lease, or None when this delivery must be dropped.

        A job that is leased is running on a live worker (a duplicate delivery, or a companion
        in another worker's batch) or on one that just died; in both cases this delivery is
        dropped at once. A dead worker's job is requeued by the reaper when its lease lapses.
        """
        outcome = self.store.start(
            job_id,
            worker=self.state.name,
            lease_ttl_s=self.settings.lease_ttl_s,
            max_attempts=self.settings.max_attempts,
        )
        if outcome.verdict != "started":
            log.info("delivery of job %s dropped: %s", job_id, outcome.verdict)
            return None
        log.info("job %s started (attempt %d)", job_id, outcome.attempts)
        record = self.store.get(job_id)  # before the keeper: if this fails, the lease lapses
        lease = LeaseKeeper(self.store, job_id, outcome.token, self.settings.lease_ttl_s)
        return Claim(record, outcome, lease)

    def _add_companions(self, claims: list[Claim]) -> None:
        """Claim queued jobs that can share the lead's batch (dynamic micro-batching).

        A lone job waits at most settings.batch_window_s for company.
        """
        lead = claims[0]
        budget = self.settings.max_batch - lead.record.request.num_images
        key = batch_key(lead.record.request)
        deadline = time.monotonic() + self.settings.batch_window_s
        while budget > 0:
            for job_id, request in self.store.peek_pending(lead.record.queue, COMPANION_SCAN):
                if batch_key(request) != key or request.num_images > budget:
                    continue
                claim = self._claim(job_id)
                if claim is not None:
                    claims.append(claim)
                    budget -= request.num_images
            if len(claims) > 1 or time.monotonic() >= deadline:
                break
            time.sleep(0.001)

    # --- generating -------------------------------------------------------------------------

    def _generate(self, claims: list[Claim]) -> None:
        faults = {
            c.id: fault
            for c in claims
            if (fault := fault_for(c.record.request, self.settings.fault_injection))
        }
        reporter = StepReporter(self, claims, self.settings.progress_interval_s, faults)
        started = time.time()
        for claim in claims:
            claim.timings.queue_s = round(claim.started - claim.record.created_at, 4)
        try:
            generations = self.holder.generate_batch([c.record.request for c in claims], reporter)
        except (JobCanceled, LeaseLost):
            return
        except SoftTimeLimitExceeded:
            self._fail_active(claims, "timeout", "the job ran past its time limit")
            return
        except Exception as exc:
            log.exception("generation failed for %s", ", ".join(c.id for c in claims))
            self._fail_active(claims, "generation_failed", f"{type(exc).__name__}: {exc}"[:500])
            return
        inference_s = round(time.time() - started, 4)
        if len(claims) > 1:
            log.info("batch of %d jobs generated in %.2fs", len(claims), inference_s)
        for claim, generation in zip(claims, generations, strict=True):
            if claim.active:
                claim.timings.inference_s = inference_s
                self.uploader.submit(lambda c=claim, g=generation: self._complete_logged(c, g))
                claim.handed_off = True

    def _fail_active(self, claims: list[Claim], code: str, message: str) -> None:
        for claim in claims:
            if claim.active:
                self.finish(claim, JobStatus.FAILED, error=JobError(code=code, message=message))

    # --- storing and finishing (upload threads) ---------------------------------------------

    def _complete_logged(self, claim: Claim, generation: Generation) -> None:
        # Batch companions ran under the lead job's task: their log lines carry their own id.
        with log_context(job_id=claim.id, tenant=claim.record.tenant):
            self._complete(claim, generation)

    def _complete(self, claim: Claim, generation: Generation) -> None:
        """Store the images and manifest, then mark the job succeeded; never the other way."""
        upload_started = time.time()
        try:
            result = self._store_outputs(claim, generation)
        except StorageUnavailable as exc:
            log.warning("job %s: storage failed: %s", claim.id, exc)
            error = JobError(code="storage_unavailable", message="image storage is unavailable")
            self.finish(claim, JobStatus.FAILED, error=error)
            return
        except Exception as exc:
            log.exception("job %s: storing images failed", claim.id)
            error = JobError(code="generation_failed", message=f"{type(exc).__name__}: {exc}"[:500])
            self.finish(claim, JobStatus.FAILED, error=error)
            return
        claim.timings.upload_s = round(time.time() - upload_started, 4)
        self.finish(claim, JobStatus.SUCCEEDED, result=result)

    def finish(
        self,
        claim: Claim,
        status: JobStatus,
        *,
        result: JobResult | None = None,
        error: JobError | None = None,
    ) -> None:
        """Record the outcome and release the lease."""
        claim.active = False
        claim.timings.total_s = round(time.time() - claim.record.created_at, 4)

        def finish() -> bool:
            return self.store.finish(
                claim.id,
                status,
                token=claim.outcome.token,
                result=result,
                error=error,
                timings=claim.timings,
            )

        try:
            # Recording the outcome survives a Redis restart. If Redis stays away longer, the
            # job stays 'running' without a lease and the reaper hands it back.
            recorded = retry_until(
                self.settings.redis_retry_s, finish, (redis.RedisError,), f"finishing {claim.id}"
            )
        finally:
            claim.lease.stop()
            with self._count_lock:
                self.state.jobs_done += 1
            self._on_change()
        if recorded:
            log.info("job %s %s in %.2fs", claim.id, status.value, claim.timings.total_s)
            settle_batch(self.store, self.storage, claim.id, self.settings.job_ttl_s)
        else:
            log.info("job %s: %s refused, it already ended", claim.id, status.value)

    def _store_outputs(self, claim: Claim, generation: Generation) -> JobResult:
        """Upload every image and then result.json."""
        record, request = claim.record, claim.record.request
        fmt = request.output_format
        images: list[ImageResult] = []
        objects: list[tuple[str, bytes, str]] = []
        for n, (pixels, flagged) in enumerate(zip(generation.images, generation.nsfw, strict=True)):
            key = keys_s3.image_key(record.id, n, extension(fmt))
            body = encode_image(
                pixels,
                fmt,
                png_compress_level=self.settings.png_compress_level,
                quality=self.settings.jpeg_quality,
            )
            objects.append((key, body, fmt.content_type))
            images.append(
                ImageResult(
                    key=key,
                    width=int(pixels.shape[1]),
                    height=int(pixels.shape[0]),
                    seed=request.image_seed(n),
                    prompt_index=request.prompt_index(n),
                    content_type=fmt.content_type,
                    nsfw_content_detected=flagged,
                )
            )
        result = JobResult(
            images=images,
            nsfw_content_detected=generation.nsfw,
            manifest_key=keys_s3.manifest_key(record.id),
        )
        manifest = {
            "job_id": record.id,
            "model": self.settings.model,
            "worker": self.state.name,
            "request": request.model_dump(mode="json"),
            "images": [i.model_dump(mode="json", exclude={"url", "expires_at"}) for i in images],
            "nsfw_content_detected": generation.nsfw,
            "nsfw_policy": "images flagged by the safety checker are replaced by black images",
            "timings": claim.timings.model_dump(mode="json"),
        }
        objects.append(
            (result.manifest_key, json.dumps(manifest, indent=2).encode(), "application/json")
        )
        # All objects at once: a job waits for one round trip to storage, not one per object.
        for put in [self._puts.submit(self._put, *obj) for obj in objects]:
            put.result()  # StorageUnavailable surfaces here
        return result

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        """Store one object, riding out a storage outage up to settings.storage_retry_s."""
        try:
            retry_until(
                self.settings.storage_retry_s,
                lambda: self.storage.put(key, body, content_type),
                (BotoCoreError, ClientError),
                f"upload of {key}",
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(str(exc)) from exc
