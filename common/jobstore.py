"""The Redis job store: the job record is the truth about a job.

Every state change is one Lua script, so it is atomic with the event it emits: a terminal state
never changes, and each transition appends exactly one event to the job's stream.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

from common import keys
from common.schemas import (
    TERMINAL_STATUSES,
    JobError,
    JobRequest,
    JobResult,
    JobStatus,
    Timings,
    WebhookSpec,
)

_TERMINAL_LUA = "{" + ", ".join(f"['{s.value}']=true" for s in TERMINAL_STATUSES) + "}"

# The webhook outbox, written in the same script as the transition it announces: a terminal
# transition happens once, so its event is queued once, however often the job was delivered.
# Only for jobs whose webhook subscribed to the event ('webhook_events' is ",job.x,job.y,").
# The entry carries the job record as it is at that instant, so the body describes the job as
# the event saw it. The webhook-id is derived from the job and the event: stable for retries.
_WEBHOOK_LUA = (
    """
local function sdq_webhook(job_key, event, suffix)
  local wanted = redis.call('HGET', job_key, 'webhook_events')
  if not wanted or not string.find(wanted, ',' .. event .. ',', 1, true) then return end
  local raw = redis.call('HGETALL', job_key)
  local job = {}
  for i = 1, #raw, 2 do job[raw[i]] = raw[i + 1] end
  local now = redis.call('TIME')
  redis.call('XADD', '"""
    + keys.webhook_outbox()
    + "', 'MAXLEN', '~', "
    + str(keys.WEBHOOK_OUTBOX_MAXLEN)
    + """, '*', 'kind', 'job',
    'subject', job['id'], 'event', event, 'msg', 'msg_' .. job['id'] .. '_' .. suffix,
    'at', now[1] .. '.' .. string.format('%06d', tonumber(now[2])), 'snapshot', cjson.encode(job))
end
local function sdq_webhook_progress(job_key, step)
  local wanted = redis.call('HGET', job_key, 'webhook_events')
  if not wanted or not string.find(wanted, ',job.progress,', 1, true) then return end
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local last = tonumber(redis.call('HGET', job_key, 'webhook_progress_ms') or '0')
  if ms - last < """
    + str(keys.WEBHOOK_PROGRESS_INTERVAL_MS)
    + """ then return end
  redis.call('HSET', job_key, 'webhook_progress_ms', ms)
  local attempt = redis.call('HGET', job_key, 'attempts') or '0'
  sdq_webhook(job_key, 'job.progress', 'progress_' .. attempt .. '_' .. step)
end
"""
)

# KEYS: job, events, tenant_jobs, pending, seq, idempotency ('' for none), deadlines
# ARGV: id, tenant, queue, created_at, request_json, total_steps, job_ttl, fingerprint, idem_ttl,
#       events_maxlen, deadline ('' for none), batch_id ('' for none), webhook_json ('' for none),
#       webhook_events (",job.started,job.succeeded,")
_CREATE = """
if KEYS[6] ~= '' then
  local found = redis.call('HMGET', KEYS[6], 'job_id', 'fingerprint')
  if found[1] and redis.call('EXISTS', 'sdq:job:' .. found[1]) == 1 then
    return {0, found[1], found[2]}
  end
end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'tenant', ARGV[2], 'queue', ARGV[3],
  'status', 'queued', 'created_at', ARGV[4], 'request', ARGV[5], 'step', 0,
  'total_steps', ARGV[6], 'attempts', 0, 'seq', seq)
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
redis.call('ZADD', KEYS[8], ARGV[4], ARGV[1])
if ARGV[11] ~= '' then
  redis.call('HSET', KEYS[1], 'deadline', ARGV[11])
  redis.call('ZADD', KEYS[7], ARGV[11], ARGV[1])
end
if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'batch_id', ARGV[12]) end
if ARGV[13] ~= '' then
  redis.call('HSET', KEYS[1], 'webhook', ARGV[13], 'webhook_events', ARGV[14])
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], '*', 'type', 'status', 'status', 'queued')
redis.call('EXPIRE', KEYS[2], ARGV[7])
if KEYS[6] ~= '' then
  redis.call('HSET', KEYS[6], 'job_id', ARGV[1], 'fingerprint', ARGV[8])
  redis.call('EXPIRE', KEYS[6], ARGV[9])
end
return {1, ARGV[1], ARGV[8]}
"""

# KEYS: the status keys (JobStore._status_keys): job, events, pending, lease, running, deadlines
# ARGV: to_status, allowed_from (comma separated), field/value pairs as JSON, events_maxlen,
#       lease token ('' to leave the lease alone)
_TRANSITION = (
    _WEBHOOK_LUA
    + "local terminal = "
    + _TERMINAL_LUA
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
if terminal[cur] then return {'refused', cur} end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do
  if s == cur then allowed = true end
end
if not allowed then return {'refused', cur} end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
local fields = cjson.decode(ARGV[3])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
if ARGV[1] == 'succeeded' then
  redis.call('HSET', KEYS[1], 'step', redis.call('HGET', KEYS[1], 'total_steps'))
end
local id = redis.call('HGET', KEYS[1], 'id')
if ARGV[1] ~= 'queued' then redis.call('ZREM', KEYS[3], id) end
if terminal[ARGV[1]] then redis.call('ZREM', KEYS[5], id); redis.call('ZREM', KEYS[6], id) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'status', 'status', ARGV[1])
if terminal[ARGV[1]] then sdq_webhook(KEYS[1], 'job.' .. ARGV[1], ARGV[1]) end
if ARGV[5] ~= '' and redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
return {'ok', cur}
"""
)

# KEYS: the status keys (JobStore._status_keys): job, events, pending, lease, running, deadlines
# ARGV: token, lease_ms, now, worker, max_attempts, events_maxlen
_START = (
    _WEBHOOK_LUA
    + "local terminal = "
    + _TERMINAL_LUA
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', 0} end
if terminal[cur] then return {'terminal', 0} end
local id = redis.call('HGET', KEYS[1], 'id')
local function finish(status, error_json)
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', ARGV[3])
  if error_json then redis.call('HSET', KEYS[1], 'error', error_json) end
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[5], id)
  redis.call('ZREM', KEYS[6], id)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'type', 'status', 'status', status)
  sdq_webhook(KEYS[1], 'job.' .. status, status)
end
local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline') or '')
if cur == 'queued' and deadline and tonumber(ARGV[3]) > deadline then
  finish('expired', cjson.encode({code='expired',
    message='the job did not start before its deadline'}))
  return {'expired', 0}
end
if not redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'leased', 0} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[5]) then
  finish('failed', cjson.encode({code='worker_lost', message='the job was delivered ' .. attempts ..
    ' times and its worker died each time'}))
  redis.call('DEL', KEYS[4])
  return {'exhausted', attempts}
end
attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[4], 'step', 0)
local first = not redis.call('HGET', KEYS[1], 'started_at')
if first then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[3])
end
redis.call('ZREM', KEYS[3], id)
redis.call('ZREM', KEYS[6], id)
redis.call('ZADD', KEYS[5], ARGV[3], id)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'type', 'status', 'status', 'running',
  'attempt', attempts)
if first then sdq_webhook(KEYS[1], 'job.started', 'started') end  -- once, not per delivery
return {'started', attempts}
"""
)

# KEYS: job, events.  ARGV: step, total, events_maxlen, write ('1' or '0')
# Returns the cancel flag, so the per-step callback costs one round trip.
_PROGRESS = (
    _WEBHOOK_LUA
    + """
if ARGV[4] == '1' and redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'step', ARGV[1], 'total_steps', ARGV[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'progress',
    'step', ARGV[1], 'total_steps', ARGV[2])
  sdq_webhook_progress(KEYS[1], ARGV[1])
end
return redis.call('HGET', KEYS[1], 'cancel_requested') or '0'
"""
)

# KEYS: the status keys (JobStore._status_keys).  ARGV: now, events_maxlen
_CANCEL = (
    _WEBHOOK_LUA
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return 'missing' end
if cur == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  redis.call('ZREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
  redis.call('ZREM', KEYS[6], redis.call('HGET', KEYS[1], 'id'))
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'type', 'status', 'status', 'canceled')
  sdq_webhook(KEYS[1], 'job.canceled', 'canceled')
  return 'canceled'
end
if cur == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return 'requested'
end
return cur
"""
)

# KEYS: the status keys (JobStore._status_keys).  ARGV: now, events_maxlen, max_attempts
# A running job whose lease lapsed (its worker vanished) goes back to the queue, or fails when it
# has used up its attempts. The caller re-sends the task when this returns 'requeued'.
_REQUEUE = (
    _WEBHOOK_LUA
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
local id = redis.call('HGET', KEYS[1], 'id')
if cur ~= 'running' then
  if id then redis.call('ZREM', KEYS[5], id) end
  return 'skipped'
end
if redis.call('EXISTS', KEYS[4]) == 1 then return 'leased' end
redis.call('ZREM', KEYS[5], id)
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[1], 'error',
    cjson.encode({code='worker_lost', message='the job was delivered ' .. attempts ..
    ' times and its worker died each time'}))
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'type', 'status', 'status', 'failed')
  sdq_webhook(KEYS[1], 'job.failed', 'failed')
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'step', 0)
redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'seq'), id)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'type', 'status', 'status', 'queued',
  'reason', 'requeued')
return 'requeued'
"""
)

# KEYS: the status keys (JobStore._status_keys).  ARGV: id, now, events_maxlen
_EXPIRE = (
    _WEBHOOK_LUA
    + """
redis.call('ZREM', KEYS[6], ARGV[1])
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline') or '')
if not deadline or deadline > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'expired', 'finished_at', ARGV[2], 'error',
  cjson.encode({code='expired', message='the job did not start before its deadline'}))
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'status', 'status', 'expired')
sdq_webhook(KEYS[1], 'job.expired', 'expired')
return 1
"""
)

# KEYS: lease.  ARGV: token, lease_ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class JobNotFound(LookupError):
    """No such job (or not this tenant's)."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


@dataclass(frozen=True)
class JobRecord:
    """A job as stored in Redis."""

    id: str
    tenant: str
    queue: str
    status: JobStatus
    created_at: float
    request: JobRequest
    step: int
    total_steps: int
    attempts: int
    seq: int
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    result: JobResult | None = None
    error: JobError | None = None
    timings: Timings | None = None
    cancel_requested: bool = False
    deadline: float | None = None
    batch_id: str | None = None
    webhook: WebhookSpec | None = None

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> JobRecord:
        def opt_float(name: str) -> float | None:
            return float(raw[name]) if raw.get(name) else None

        return cls(
            id=raw["id"],
            tenant=raw["tenant"],
            queue=raw["queue"],
            status=JobStatus(raw["status"]),
            created_at=float(raw["created_at"]),
            request=JobRequest.model_validate_json(raw["request"]),
            step=int(raw.get("step", 0)),
            total_steps=int(raw["total_steps"]),
            attempts=int(raw.get("attempts", 0)),
            seq=int(raw["seq"]),
            started_at=opt_float("started_at"),
            finished_at=opt_float("finished_at"),
            worker=raw.get("worker") or None,
            result=JobResult.model_validate_json(raw["result"]) if raw.get("result") else None,
            error=JobError.model_validate_json(raw["error"]) if raw.get("error") else None,
            timings=Timings.model_validate_json(raw["timings"]) if raw.get("timings") else None,
            cancel_requested=raw.get("cancel_requested") == "1",
            deadline=opt_float("deadline"),
            batch_id=raw.get("batch_id") or None,
            webhook=WebhookSpec.model_validate_json(raw["webhook"]) if raw.get("webhook") else None,
        )


@dataclass(frozen=True)
class StartOutcome:
    """What a worker learns when it tries to start a delivered job."""

    verdict: str  # started | missing | terminal | leased | exhausted
    attempts: int
    token: str


@dataclass(frozen=True)
class JobEvent:
    id: str
    fields: dict[str, str]


def webhook_events(webhook: WebhookSpec | None) -> str:
    """The events a webhook wants, as the Lua scripts look them up: ",job.started,job.failed,"."""
    if webhook is None or not webhook.events:
        return ""
    return "," + ",".join(event.value for event in webhook.events) + ","


def new_job_id() -> str:
    """128 random bits, hex: unguessable and safe in object keys."""
    return secrets.token_hex(16)


def fingerprint(body: dict[str, Any]) -> str:
    """Stable digest of a request body, for Idempotency-Key comparisons."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class JobStore:
    """Reads and atomically changes job records. Safe to share between threads."""

    def __init__(self, client: redis.Redis, *, job_ttl_s: int, idempotency_ttl_s: int) -> None:
        self.redis = client
        self.job_ttl_s = job_ttl_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self._create = client.register_script(_CREATE)
        self._transition = client.register_script(_TRANSITION)
        self._start = client.register_script(_START)
        self._progress = client.register_script(_PROGRESS)
        self._cancel = client.register_script(_CANCEL)
        self._renew = client.register_script(_RENEW)
        self._requeue = client.register_script(_REQUEUE)
        self._expire = client.register_script(_EXPIRE)

    @classmethod
    def from_url(cls, url: str, *, job_ttl_s: int, idempotency_ttl_s: int) -> JobStore:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        return cls(client, job_ttl_s=job_ttl_s, idempotency_ttl_s=idempotency_ttl_s)

    # --- submit ---------------------------------------------------------------------------

    def create(
        self,
        request: JobRequest,
        *,
        tenant: str,
        queue: str,
        idempotency_key: str | None = None,
        body_fingerprint: str = "",
        deadline: float | None = None,
        batch_id: str | None = None,
        webhook: WebhookSpec | None = None,
    ) -> tuple[str, bool]:
        """Store a new queued job. Returns ``(job_id, created)``.

        With an idempotency key seen before, returns the earlier job and ``created=False``;
        raises :class:`IdempotencyConflict` when that key came with another body. A job still
        queued at ``deadline`` (epoch seconds) ends ``expired`` instead of running. A
        ``webhook`` (already checked) is told of the events it subscribed to.
        """
        job_id = new_job_id()
        idem_key = keys.idempotency(tenant, idempotency_key) if idempotency_key else ""
        created, found_id, found_fp = self._create(
            keys=[
                keys.job(job_id),
                keys.job_events(job_id),
                keys.tenant_jobs(tenant),
                keys.pending(queue),
                keys.sequence(),
                idem_key,
                keys.deadlines(),
                keys.undispatched(),
            ],
            args=[
                job_id,
                tenant,
                queue,
                repr(time.time()),
                request.model_dump_json(),
                request.num_inference_steps,
                self.job_ttl_s,
                body_fingerprint,
                self.idempotency_ttl_s,
                keys.EVENTS_MAXLEN,
                repr(deadline) if deadline is not None else "",
                batch_id or "",
                webhook.model_dump_json() if webhook is not None else "",
                webhook_events(webhook),
            ],
        )
        if not int(created) and found_fp != body_fingerprint:
            raise IdempotencyConflict(found_id)
        return found_id, bool(int(created))

    def discard(self, job_id: str, *, tenant: str, idempotency_key: str | None = None) -> None:
        """Remove a job that could not be enqueued, so it never shows up as queued forever."""
        record = self.redis.hget(keys.job(job_id), "queue")
        pipe = self.redis.pipeline()
        pipe.delete(keys.job(job_id), keys.job_events(job_id))
        pipe.zrem(keys.tenant_jobs(tenant), job_id)
        pipe.zrem(keys.undispatched(), job_id)
        if record:
            pipe.zrem(keys.pending(record), job_id)
        if idempotency_key:
            pipe.delete(keys.idempotency(tenant, idempotency_key))
        pipe.execute()

    def mark_dispatched(self, job_ids: list[str]) -> None:
        """Their Celery messages are published: the reaper need not publish them again."""
        if job_ids:
            self.redis.zrem(keys.undispatched(), *job_ids)

    def undispatched_since(self, before: float, *, limit: int = 500) -> list[str]:
        """Jobs stored before ``before`` (epoch s) whose message was never marked published."""
        return self.redis.zrangebyscore(keys.undispatched(), "-inf", before, start=0, num=limit)

    # --- read -----------------------------------------------------------------------------

    def get(self, job_id: str, *, tenant: str | None = None) -> JobRecord:
        raw = self.redis.hgetall(keys.job(job_id))
        if not raw or (tenant is not None and raw.get("tenant") != tenant):
            raise JobNotFound(job_id)
        return JobRecord.from_hash(raw)

    def queue_position(self, record: JobRecord) -> int | None:
        """Jobs ahead of this one in its queue (0 = next), or None once it left the queue."""
        if record.status is not JobStatus.QUEUED:
            return None
        return self.redis.zrank(keys.pending(record.queue), record.id)

    def queue_depth(self, queue: str) -> int:
        return self.redis.zcard(keys.pending(queue))

    def list(
        self,
        *,
        tenant: str,
        status: JobStatus | None = None,
        cursor: int | None = None,
        limit: int = 20,
    ) -> tuple[list[JobRecord], int | None]:
        """A tenant's jobs, newest first. Returns the page and the cursor of the next one."""
        index = keys.tenant_jobs(tenant)
        upper: str | int = f"({cursor}" if cursor is not None else "+inf"
        page: list[JobRecord] = []
        batch = max(limit, 50)
        while len(page) < limit:
            rows = self.redis.zrevrangebyscore(
                index, upper, "-inf", start=0, num=batch, withscores=True
            )
            if not rows:
                return page, None
            pipe = self.redis.pipeline()
            for job_id, _ in rows:
                pipe.hgetall(keys.job(job_id))
            gone: list[str] = []
            for (job_id, seq), raw in zip(rows, pipe.execute(), strict=True):
                upper = f"({int(seq)}"
                if not raw:
                    gone.append(job_id)  # the record expired: drop it from the index too
                    continue
                record = JobRecord.from_hash(raw)
                if status is None or record.status is status:
                    page.append(record)
                    if len(page) == limit:
                        break
            if gone:
                self.redis.zrem(index, *gone)
            if len(rows) < batch and len(page) < limit:
                return page, None
        return page, page[-1].seq

    def events(
        self, job_id: str, *, after: str = "0", block_ms: int | None = None
    ) -> list[JobEvent]:
        """Events after the stream id ``after``; waits up to ``block_ms`` for new ones."""
        answer = self.redis.xread({keys.job_events(job_id): after}, block=block_ms, count=100)
        if not answer:
            return []
        _, entries = answer[0]
        return [JobEvent(id=entry_id, fields=fields) for entry_id, fields in entries]

    # --- cancel ---------------------------------------------------------------------------

    def cancel(self, job_id: str) -> str:
        """Cancel a queued job now, or ask the running one to stop. Returns what happened:
        'canceled', 'requested', 'missing', or the terminal status it already had."""
        return self._cancel(
            keys=self._status_keys(job_id),
            args=[repr(time.time()), keys.EVENTS_MAXLEN],
        )

    # --- worker side ----------------------------------------------------------------------

    def start(
        self, job_id: str, *, worker: str, lease_ttl_s: float, max_attempts: int
    ) -> StartOutcome:
        """Take the lease and move the job to running, counting the attempt."""
        token = f"{worker}:{secrets.token_hex(8)}"
        verdict, attempts = self._start(
            keys=self._status_keys(job_id),
            args=[
                token,
                int(lease_ttl_s * 1000),
                repr(time.time()),
                worker,
                max_attempts,
                keys.EVENTS_MAXLEN,
            ],
        )
        return StartOutcome(verdict=verdict, attempts=int(attempts), token=token)

    def renew_lease(self, job_id: str, token: str, lease_ttl_s: float) -> bool:
        return bool(
            self._renew(keys=[keys.job_lease(job_id)], args=[token, int(lease_ttl_s * 1000)])
        )

    def lease_ttl_ms(self, job_id: str) -> int:
        """Milliseconds left on the job's lease (negative when there is none)."""
        return self.redis.pttl(keys.job_lease(job_id))

    def progress(self, job_id: str, step: int, total: int, *, write: bool = True) -> bool:
        """Record progress (when ``write``); returns whether a cancel was requested."""
        return self.progress_many([job_id], step, total, write=write)[0]

    def progress_many(
        self, job_ids: list[str], step: int, total: int, *, write: bool = True
    ) -> list[bool]:
        """``progress`` for every job of a batch in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._progress(
                keys=[keys.job(job_id), keys.job_events(job_id)],
                args=[step, total, keys.EVENTS_MAXLEN, "1" if write else "0"],
                client=pipe,
            )
        return [flag == "1" for flag in pipe.execute()]

    def peek_pending(self, queue: str, limit: int) -> list[tuple[str, JobRequest]]:
        """The first ``limit`` queued jobs of ``queue`` with their requests (batching)."""
        job_ids = self.redis.zrange(keys.pending(queue), 0, limit - 1)
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "request")
        return [
            (job_id, JobRequest.model_validate_json(raw))
            for job_id, raw in zip(job_ids, pipe.execute(), strict=True)
            if raw
        ]

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        token: str,
        result: JobResult | None = None,
        error: JobError | None = None,
        timings: Timings | None = None,
    ) -> bool:
        """Move a running job to a terminal status and release the lease. False if refused."""
        assert status.is_terminal
        fields: dict[str, str] = {"finished_at": repr(time.time())}
        if result is not None:
            fields["result"] = result.model_dump_json()
        if error is not None:
            fields["error"] = error.model_dump_json()
        if timings is not None:
            fields["timings"] = timings.model_dump_json()
        return self._apply(
            job_id, status, allowed_from=(JobStatus.RUNNING,), fields=fields, token=token
        )

    def transition(
        self,
        job_id: str,
        status: JobStatus,
        *,
        allowed_from: tuple[JobStatus, ...],
        fields: dict[str, str] | None = None,
    ) -> bool:
        """A generic guarded transition (never out of a terminal status)."""
        return self._apply(job_id, status, allowed_from=allowed_from, fields=fields or {}, token="")

    def _apply(
        self,
        job_id: str,
        status: JobStatus,
        *,
        allowed_from: tuple[JobStatus, ...],
        fields: dict[str, str],
        token: str,
    ) -> bool:
        verdict, _ = self._transition(
            keys=self._status_keys(job_id),
            args=[
                status.value,
                ",".join(s.value for s in allowed_from),
                json.dumps(fields),
                keys.EVENTS_MAXLEN,
                token,
            ],
        )
        return verdict == "ok"

    # --- reaper ---------------------------------------------------------------------------

    def running_since(self, before: float) -> list[str]:
        """Jobs that started running before ``before`` (epoch seconds) and are still listed."""
        return self.redis.zrangebyscore(keys.running(), "-inf", before)

    def requeue_orphan(self, job_id: str, *, max_attempts: int) -> str:
        """Requeue (or fail) a running job whose lease lapsed.

        Returns 'requeued' (send the task again), 'failed', 'leased' or 'skipped'."""
        return self._requeue(
            keys=self._status_keys(job_id),
            args=[repr(time.time()), keys.EVENTS_MAXLEN, max_attempts],
        )

    def expire_overdue(self, *, limit: int = 500) -> list[str]:
        """End queued jobs whose deadline passed; returns the ids that expired."""
        now = time.time()
        expired = []
        for job_id in self.redis.zrangebyscore(keys.deadlines(), "-inf", now, start=0, num=limit):
            done = self._expire(
                keys=self._status_keys(job_id),
                args=[job_id, repr(now), keys.EVENTS_MAXLEN],
            )
            if done:
                expired.append(job_id)
        return expired

    def _status_keys(self, job_id: str) -> list[str]:
        """The keys every status-changing script takes, in this order."""
        return [
            keys.job(job_id),
            keys.job_events(job_id),
            self._pending_of(job_id),
            keys.job_lease(job_id),
            keys.running(),
            keys.deadlines(),
        ]

    def _pending_of(self, job_id: str) -> str:
        return keys.pending(self.redis.hget(keys.job(job_id), "queue") or "")
