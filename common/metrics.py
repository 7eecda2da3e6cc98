"""Prometheus metrics that more than one process kind updates (API, GPU workers, webhook workers).

Each process exports its own counters (the API on ``/metrics``, a worker on
``SDQ_WORKER_METRICS_PORT``); Prometheus adds them up, e.g.
``sum by (status) (rate(sdq_jobs_finished_total[5m]))``. Fleet-wide gauges read from Redis (queue
depth, workers by state) are computed by the API at scrape time: see :mod:`api.metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from common.schemas import JobResult, JobStatus, Timings

# Seconds. Waits range from "next" to a long backlog; inference from a tiny model to 150 steps.
_WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_INFERENCE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300)
_UPLOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

JOBS_SUBMITTED = Counter(
    "sdq_jobs_submitted", "Jobs accepted by the API (idempotent replays not counted)", ["queue"]
)
JOBS_FINISHED = Counter(
    "sdq_jobs_finished", "Jobs that reached a terminal status, by status", ["queue", "status"]
)
QUEUE_WAIT = Histogram(
    "sdq_job_queue_wait_seconds",
    "From submission to the start of the run that finished the job",
    ["queue"],
    buckets=_WAIT_BUCKETS,
)
INFERENCE = Histogram(
    "sdq_job_inference_seconds",
    "Denoising, VAE decode and safety check of one job",
    ["queue"],
    buckets=_INFERENCE_BUCKETS,
)
UPLOAD = Histogram(
    "sdq_job_upload_seconds",
    "Encoding and uploading the images and result.json of one job",
    ["queue"],
    buckets=_UPLOAD_BUCKETS,
)
END_TO_END = Histogram(
    "sdq_job_total_seconds",
    "From submission to the terminal status (end to end, as the client sees it)",
    ["queue", "status"],
    buckets=_WAIT_BUCKETS,
)
IMAGES_GENERATED = Counter("sdq_images_generated", "Images stored for succeeded jobs", ["queue"])
NSFW_FLAGGED = Counter(
    "sdq_nsfw_flagged", "Images the safety checker flagged (stored blacked out)", ["queue"]
)
WEBHOOK_DELIVERIES = Counter(
    "sdq_webhook_deliveries",
    "Webhook delivery attempts: delivered, retry (will be tried again), failed (gave up)",
    ["event", "outcome"],
)
WORKER_BUSY = Gauge("sdq_worker_busy", "1 while this worker process runs a job")
WORKER_READY = Gauge("sdq_worker_ready", "1 once this worker process has its pipeline loaded")


def job_finished(
    queue: str,
    status: JobStatus,
    *,
    timings: Timings | None = None,
    result: JobResult | None = None,
) -> None:
    """Count one terminal transition, wherever it happened (worker, API cancel, reaper)."""
    JOBS_FINISHED.labels(queue=queue, status=status.value).inc()
    if timings is not None:
        if timings.queue_s is not None:
            QUEUE_WAIT.labels(queue=queue).observe(max(0.0, timings.queue_s))
        if timings.inference_s is not None:
            INFERENCE.labels(queue=queue).observe(timings.inference_s)
        if timings.upload_s is not None:
            UPLOAD.labels(queue=queue).observe(timings.upload_s)
        if timings.total_s is not None:
            END_TO_END.labels(queue=queue, status=status.value).observe(timings.total_s)
    if result is not None and status is JobStatus.SUCCEEDED:
        IMAGES_GENERATED.labels(queue=queue).inc(len(result.images))
        NSFW_FLAGGED.labels(queue=queue).inc(sum(result.nsfw_content_detected))


def webhook_delivery(event: str, outcome: str) -> None:
    """Count one webhook attempt: outcome is 'delivered', 'retry' or 'failed'."""
    WEBHOOK_DELIVERIES.labels(event=event, outcome=outcome).inc()
