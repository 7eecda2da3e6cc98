"""Every Redis key sdq writes, the Celery task names and the fixed limits, in one place.

TTLs that operators tune live in :mod:`common.settings`; the ones here are structural.
"""

from __future__ import annotations

PREFIX = "sdq"

# Celery task names: the API sends tasks by name so it never imports the worker (or torch).
TASK_GENERATE = "sdq.generate"

# Job events kept per job for replay (Server-Sent Events, waiters): a bounded stream.
EVENTS_MAXLEN = 1000

# Worker heartbeats: a worker is listed while its last beat is younger than this many intervals.
HEARTBEAT_MISSES = 3


def job(job_id: str) -> str:
    """Hash: the job record, the source of truth for its state. TTL: settings.job_ttl_s."""
    return f"{PREFIX}:job:{job_id}"


def job_events(job_id: str) -> str:
    """Stream: status and progress events of one job, in order. Same TTL as the job."""
    return f"{PREFIX}:job:{job_id}:events"


def job_lease(job_id: str) -> str:
    """String: token of the worker running the job. TTL: settings.lease_ttl_s, renewed."""
    return f"{PREFIX}:job:{job_id}:lease"


def tenant_jobs(tenant: str) -> str:
    """Sorted set: a tenant's job ids scored by submission sequence (listing, paging)."""
    return f"{PREFIX}:tenant:{tenant}:jobs"


def idempotency(tenant: str, key: str) -> str:
    """Hash: job id and request fingerprint for an Idempotency-Key. TTL: idempotency_ttl_s."""
    return f"{PREFIX}:idem:{tenant}:{key}"


def pending(queue: str) -> str:
    """Sorted set: queued job ids of a Celery queue by submission sequence (queue position)."""
    return f"{PREFIX}:queue:{queue}:pending"


def running() -> str:
    """Sorted set: running job ids scored by the time they started (epoch s), for the reaper."""
    return f"{PREFIX}:running"


def undispatched() -> str:
    """Sorted set: jobs stored but whose Celery message is not known to be published yet,
    scored by creation time (epoch s). The reaper publishes those older than DISPATCH_GRACE_S."""
    return f"{PREFIX}:undispatched"


# A job still undispatched this long after it was stored lost its message (the API died between
# storing and publishing); the reaper publishes it. Seconds; a duplicate message is harmless.
DISPATCH_GRACE_S = 60


def deadlines() -> str:
    """Sorted set: queued job ids scored by the deadline to start by (epoch s)."""
    return f"{PREFIX}:deadlines"


def reaper_lock() -> str:
    """String: held by the one worker that reaps this round. TTL: one reaper interval."""
    return f"{PREFIX}:reaper:lock"


def queues() -> str:
    """Set: names of the Celery queues workers consume (the API reports the depth of each)."""
    return f"{PREFIX}:queues"


def sequence() -> str:
    """Counter: monotonically increasing submission sequence."""
    return f"{PREFIX}:seq"


def worker(name: str) -> str:
    """Hash: a worker's last heartbeat. TTL: HEARTBEAT_MISSES heartbeat intervals."""
    return f"{PREFIX}:worker:{name}"


def workers() -> str:
    """Sorted set: worker names scored by the time of their last beat (epoch seconds)."""
    return f"{PREFIX}:workers"


# --- security and tenancy (common/apikeys.py, api/ratelimit.py, api/admission.py) -------------


def api_key(key_id: str) -> str:
    """Hash: one API key — tenant, SHA-256 of the key (never the key), limits. No TTL."""
    return f"{PREFIX}:apikey:{key_id}"


def api_keys() -> str:
    """Set: the ids of every API key, revoked ones included (listing)."""
    return f"{PREFIX}:apikeys"


def rate_bucket(key_id: str) -> str:
    """Hash: token bucket of an API key (tokens, last refill). TTL: time to refill, plus 1 s."""
    return f"{PREFIX}:ratelimit:{key_id}"


def tenant_queued(tenant: str) -> str:
    """Sorted set: a tenant's job ids that may still be queued (per-tenant queue cap); pruned
    of the ones that left the queue on every check. TTL: settings.job_ttl_s."""
    return f"{PREFIX}:tenant:{tenant}:queued"


# --- batches (common/batches.py) ---------------------------------------------------------------

# Rows of one batch (the seed's batch endpoint takes files of prompts); more is a 413.
BATCH_MAX_ROWS = 10_000
# Prompts of one /score request; more is a 413 (use a batch).
SCORE_MAX_ROWS = 64
# Seconds one process may hold a batch's finalize lock while it writes the results manifest.
BATCH_FINALIZE_LOCK_S = 300
# Job records read per Redis round trip when a batch is counted or its manifest written.
BATCH_READ_CHUNK = 500


def batch(batch_id: str) -> str:
    """Hash: a batch — tenant, row count, times, cancel flag, final counts, manifest keys.
    TTL: settings.job_ttl_s, like its jobs."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_jobs(batch_id: str) -> str:
    """List: the batch's job ids in row order. Same TTL as the batch."""
    return f"{PREFIX}:batch:{batch_id}:jobs"


def batch_settled(batch_id: str) -> str:
    """Set: job ids of the batch seen terminal after a delivery; when it holds every row, the
    manifest is written. Same TTL as the batch."""
    return f"{PREFIX}:batch:{batch_id}:settled"


def batch_lock(batch_id: str) -> str:
    """String: held while one process writes the batch's manifest. TTL: BATCH_FINALIZE_LOCK_S."""
    return f"{PREFIX}:batch:{batch_id}:lock"


def batch_idempotency(tenant: str, key: str) -> str:
    """String: "<batch id> <request fingerprint>" for an Idempotency-Key on batch creation.
    TTL: settings.idempotency_ttl_s."""
    return f"{PREFIX}:idem:{tenant}:batch:{key}"


# --- webhooks (common/webhooks.py, worker/webhooks.py) -----------------------------------------

TASK_WEBHOOK_DELIVER = "sdq.webhook.deliver"
# Consumer group of the webhook workers that turn outbox entries into deliveries.
WEBHOOK_OUTBOX_GROUP = "dispatchers"
# Outbox entries kept while no webhook worker reads them: a memory bound, not a retention policy.
WEBHOOK_OUTBOX_MAXLEN = 1_000_000
# Milliseconds an outbox entry may stay claimed by a dispatcher that stopped before it is
# taken over by another (dispatching is idempotent, so a takeover never duplicates).
WEBHOOK_OUTBOX_CLAIM_IDLE_MS = 60_000
# Least milliseconds between two job.progress events of one job.
WEBHOOK_PROGRESS_INTERVAL_MS = 1000
# Deliveries due now that one poller round claims and sends to the webhooks queue.
WEBHOOK_CLAIM_BATCH = 100
# Seconds a claimed delivery waits for its task before it is due again (a lost message);
# an attempt that starts renews it to the HTTP timeout plus this much.
WEBHOOK_CLAIM_LEASE_S = 120
# Retry delays are multiplied by a random factor in [1 - JITTER, 1 + JITTER].
WEBHOOK_RETRY_JITTER = 0.2
# A receiver's Retry-After (429/503) is honoured up to this many seconds.
WEBHOOK_MAX_RETRY_AFTER_S = 24 * 3600
# Response bytes read from a receiver (and discarded): a huge answer must not hold a thread.
WEBHOOK_MAX_RESPONSE_BYTES = 64 * 1024


def webhook_outbox() -> str:
    """Stream: webhook events written atomically with the transition that caused them
    (common/jobstore.py Lua); a consumer group of webhook workers turns them into deliveries."""
    return f"{PREFIX}:webhooks:outbox"


def webhook_due() -> str:
    """Sorted set: delivery ids scored by when their next attempt is due (epoch s); a claimed
    delivery is re-scored to the end of its lease, so a lost claim comes back by itself."""
    return f"{PREFIX}:webhooks:due"


def webhook_delivery(delivery_id: str) -> str:
    """Hash: one delivery of one event to one URL — body, webhook-id, state, claim, next
    attempt. TTL: settings.job_ttl_s."""
    return f"{PREFIX}:webhook:{delivery_id}"


def webhook_attempts(delivery_id: str) -> str:
    """List: JSON of each attempt of a delivery, in order. Same TTL as the delivery."""
    return f"{PREFIX}:webhook:{delivery_id}:attempts"


def subject_webhooks(kind: str, subject_id: str) -> str:
    """List: delivery ids of a job's or batch's events (``kind`` 'job' or 'batch'), in order.
    TTL: settings.job_ttl_s."""
    return f"{PREFIX}:{kind}:{subject_id}:webhooks"


def webhook_gone(tenant: str, url_digest: str) -> str:
    """String: set when a receiver answered 410 Gone; deliveries to that URL stop until a new
    job or batch names it again. TTL: settings.job_ttl_s."""
    return f"{PREFIX}:webhooks:gone:{tenant}:{url_digest}"


def tenant_webhook_secrets(tenant: str) -> str:
    """String: a tenant's own signing secrets, comma-separated, newest first (override
    settings.webhook_secret). No TTL."""
    return f"{PREFIX}:tenant:{tenant}:webhook-secrets"


def webhook_workers() -> str:
    """Sorted set: webhook worker processes by last beat (epoch s); their beats are hashes at
    :func:`worker` like the GPU workers', kept apart so they never count as GPU capacity."""
    return f"{PREFIX}:webhook-workers"
