"""Runs one delivered job: lease, generate, store, finish. Safe to run twice for one job."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError
from celery.exceptions import SoftTimeLimitExceeded

from common import storage as keys_s3
from common.jobstore import JobRecord, JobStore
from common.schemas import ImageResult, JobError, JobResult, JobStatus, Timings
from common.settings import Settings
from common.storage import Storage
from worker.batches import settle as settle_batch
from worker.encode import encode_image, extension
from worker.pipeline import Generation, PipelineHolder

log = logging.getLogger(__name__)


class JobCanceled(Exception):
    """The client asked to cancel; raised from the step callback."""


class LeaseLost(Exception):
    """Another worker may now own the job; stop without writing anything."""


class LeaseKeeper:
    """Renews the job lease in the background while the job runs."""

    def __init__(self, store: JobStore, job_id: str, token: str, ttl_s: float) -> None:
        self._store, self._job_id, self._token, self._ttl_s = store, job_id, token, ttl_s
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(self._ttl_s / 3):
            try:
                if not self._store.renew_lease(self._job_id, self._token, self._ttl_s):
                    self.lost = True
                    log.warning("lease on job %s lost", self._job_id)
                    return
            except Exception:  # Redis blip: the lease has slack for two more tries
                log.warning("lease renewal for job %s failed", self._job_id, exc_info=True)


class StepReporter:
    """The per-step hook: throttled progress writes, cancel checks, lease checks."""

    def __init__(self, store: JobStore, job_id: str, lease: LeaseKeeper, interval_s: float) -> None:
        self._store, self._job_id, self._lease = store, job_id, lease
        self._interval_s = interval_s
        self._last_write = 0.0

    def __call__(self, step: int, total: int) -> None:
        if self._lease.lost:
            raise LeaseLost(self._job_id)
        now = time.monotonic()
        write = step >= total or now - self._last_write >= self._interval_s
        if write:
            self._last_write = now
        if self._store.progress(self._job_id, step, total, write=write):
            raise JobCanceled(self._job_id)


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

    def run(self, job_id: str) -> None:
        outcome = self._start(job_id)
        if outcome is None:
            return
        self.state.current_job = job_id
        self._on_change()
        try:
            with LeaseKeeper(self.store, job_id, outcome.token, self.settings.lease_ttl_s) as lease:
                self._execute(self.store.get(job_id), outcome.token, lease)
        finally:
            self.state.current_job = None
            self.state.jobs_done += 1
            self._on_change()

    def _start(self, job_id: str):
        """Take the job, or return None when this delivery must be dropped."""
        deadline = time.monotonic() + self.settings.lease_ttl_s + 1
        while True:
            outcome = self.store.start(
                job_id,
                worker=self.state.name,
                lease_ttl_s=self.settings.lease_ttl_s,
                max_attempts=self.settings.max_attempts,
            )
            if outcome.verdict == "started":
                log.info("job %s started (attempt %d)", job_id, outcome.attempts)
                return outcome
            if outcome.verdict != "leased" or time.monotonic() > deadline:
                log.info("delivery of job %s dropped: %s", job_id, outcome.verdict)
                return None
            # Leased: either a duplicate delivery of a job that is running elsewhere, or a
            # redelivery after its worker died, whose lease runs out within lease_ttl_s.
            time.sleep(min(0.5, max(self.store.lease_ttl_ms(job_id), 50) / 1000))

    def _execute(self, record: JobRecord, token: str, lease: LeaseKeeper) -> None:
        started = time.time()
        timings = Timings(queue_s=round(started - record.created_at, 4))
        reporter = StepReporter(self.store, record.id, lease, self.settings.progress_interval_s)
        try:
            generation = self.holder.generate(record.request, reporter)
            timings.inference_s = round(time.time() - started, 4)
            upload_started = time.time()
            result = self._store_outputs(record, generation, timings)
            timings.upload_s = round(time.time() - upload_started, 4)
        except JobCanceled:
            self._finish(record, JobStatus.CANCELED, token, timings, error=None)
            return
        except LeaseLost:
            return
        except SoftTimeLimitExceeded:
            error = JobError(code="timeout", message="the job ran past its time limit")
            self._finish(record, JobStatus.FAILED, token, timings, error=error)
            return
        except (BotoCoreError, ClientError) as exc:
            log.warning("job %s: storage failed: %s", record.id, exc)
            error = JobError(code="storage_unavailable", message="image storage is unavailable")
            self._finish(record, JobStatus.FAILED, token, timings, error=error)
            return
        except Exception as exc:
            log.exception("job %s failed", record.id)
            error = JobError(code="generation_failed", message=f"{type(exc).__name__}: {exc}"[:500])
            self._finish(record, JobStatus.FAILED, token, timings, error=error)
            return
        self._finish(record, JobStatus.SUCCEEDED, token, timings, result=result)

    def _finish(
        self,
        record: JobRecord,
        status: JobStatus,
        token: str,
        timings: Timings,
        *,
        result: JobResult | None = None,
        error: JobError | None = None,
    ) -> None:
        timings.total_s = round(time.time() - record.created_at, 4)
        if not self.store.finish(
            record.id, status, token=token, result=result, error=error, timings=timings
        ):
            log.info("job %s: %s refused, it already ended", record.id, status.value)
            return
        log.info("job %s %s in %.2fs", record.id, status.value, timings.total_s)
        settle_batch(self.store, self.storage, record.id, self.settings.job_ttl_s)

    def _store_outputs(
        self, record: JobRecord, generation: Generation, timings: Timings
    ) -> JobResult:
        """Upload every image and then result.json; the job succeeds only after both."""
        request = record.request
        fmt = request.output_format
        images: list[ImageResult] = []
        for n, (pixels, flagged) in enumerate(zip(generation.images, generation.nsfw, strict=True)):
            key = keys_s3.image_key(record.id, n, extension(fmt))
            body = encode_image(
                pixels,
                fmt,
                png_compress_level=self.settings.png_compress_level,
                quality=self.settings.jpeg_quality,
            )
            self.storage.put(key, body, fmt.content_type)
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
            "images": [
                image.model_dump(mode="json", exclude={"url", "expires_at"}) for image in images
            ],
            "nsfw_content_detected": generation.nsfw,
            "nsfw_policy": "images flagged by the safety checker are replaced by black images",
            "timings": timings.model_dump(mode="json"),
        }
        self.storage.put(
            result.manifest_key, json.dumps(manifest, indent=2).encode(), "application/json"
        )
        return result
