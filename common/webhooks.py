"""Webhook deliveries in Redis: the outbox they come from, their schedule, and their log.

The path of one event, each step safe to repeat:

1. A transition of a job (or the end of a batch) appends an entry to the outbox stream in the
   same Lua script that makes it (common/jobstore.py, common/batches.py). A terminal transition
   happens once, so its event is queued once, even when the job itself ran twice.
2. A webhook worker reads the outbox in a consumer group, renders the body, and creates the
   delivery: one hash whose id derives from the event (creating it twice is a no-op), listed
   under its job or batch, and scored as due now in the ``due`` sorted set. Then it acknowledges
   the entry; an entry of a worker that died unacknowledged is taken over by another.
3. Pollers claim due deliveries atomically: a claim re-scores the delivery to the end of a lease
   and gives it a token, and a Celery task on the webhooks queue carries the id and token. An
   attempt runs only with the current token; when it ends it records itself and, on failure,
   re-scores the delivery to its next due time. A lost task, or a worker killed mid-attempt,
   leaves the delivery in the set: it is due again when the lease ends, and a stale task that
   turns up late finds its token replaced and does nothing. Pending retries live in Redis, not
   in broker messages: a restart loses none and repeats none (Celery countdown/ETA tasks on a
   Redis broker would be redelivered whenever the ETA exceeds the visibility timeout).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
from pydantic import BaseModel, Field

from common import keys
from common.settings import decode_webhook_secrets

_DELIVERY_PREFIX = keys.webhook_delivery("")

# KEYS: delivery, subject list, due.  ARGV: id, ttl, due_at, field/value pairs...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
"""

# KEYS: due.  ARGV: now, limit, lease_until, token prefix.  Returns id, token, id, token, ...
_CLAIM = (
    "local prefix = '"
    + _DELIVERY_PREFIX
    + """'
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for i, id in ipairs(ids) do
  local key = prefix .. id
  if redis.call('HGET', key, 'state') == 'pending' then
    local token = ARGV[4] .. ':' .. i
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    redis.call('HSET', key, 'claim', token)
    table.insert(out, id)
    table.insert(out, token)
  else
    redis.call('ZREM', KEYS[1], id)  -- finished, or expired with its job
  end
end
return out
"""
)

# KEYS: delivery, due.  ARGV: token, lease_until, id.  The attempt may start: renew the lease.
_BEGIN = """
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# KEYS: delivery, attempts, due.  ARGV: token, attempt_json, outcome, next_at, id, ttl
# The attempt is logged whatever happens (it did happen); the schedule changes only under the
# token that is still current.
_RECORD = """
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HDEL', KEYS[1], 'claim')
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'next_at', ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
else
  redis.call('HSET', KEYS[1], 'state', ARGV[3])
  redis.call('HDEL', KEYS[1], 'next_at')
  redis.call('ZREM', KEYS[3], ARGV[5])
end
return 1
"""


class DeliveryState(StrEnum):
    PENDING = "pending"  # its next attempt is due at next_retry_at (or is being made)
    DELIVERED = "delivered"  # a 2xx came back
    FAILED = "failed"  # given up: attempts used up, 410 Gone, or refused


class WebhookAttempt(BaseModel):
    n: int = Field(description="1 for the first attempt")
    at: datetime = Field(description="When it was sent")
    status_code: int | None = Field(None, description="The receiver's HTTP status, if any")
    error: str | None = Field(None, description="Why it did not count as delivered")
    duration_ms: int = Field(description="Time to the answer or the error")
    next_retry_at: datetime | None = Field(None, description="When the next attempt was due")


class WebhookDelivery(BaseModel):
    """One event to one URL, with every attempt made."""

    id: str = Field(description="Delivery id (for redeliver)")
    event: str = Field(description="job.succeeded, batch.completed, ...")
    webhook_id: str = Field(description="The webhook-id header: the same on every attempt")
    url: str = Field(description="Receiver")
    state: DeliveryState = Field(description="pending, delivered or failed")
    created_at: datetime = Field(description="When the event was dispatched")
    attempts: list[WebhookAttempt] = Field(description="Every attempt so far")
    next_retry_at: datetime | None = Field(None, description="While pending: the next attempt")
    redelivery_of: str | None = Field(None, description="The delivery this one sends again")


class WebhookDeliveryList(BaseModel):
    deliveries: list[WebhookDelivery] = Field(description="Deliveries of its events")


@dataclass(frozen=True)
class Delivery:
    """A delivery as stored."""

    id: str
    kind: str  # job | batch
    subject: str  # the job or batch id
    tenant: str
    event: str
    msg_id: str
    url: str
    body: bytes
    created_at: float
    state: DeliveryState
    attempts: int
    next_at: float | None
    redelivery_of: str | None

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Delivery:
        return cls(
            id=raw["id"],
            kind=raw["kind"],
            subject=raw["subject"],
            tenant=raw["tenant"],
            event=raw["event"],
            msg_id=raw["msg_id"],
            url=raw["url"],
            # Stored as UTF-8 text and encoded back: the very bytes that were rendered.
            body=raw.get("body", "").encode(),
            created_at=float(raw["created_at"]),
            state=DeliveryState(raw["state"]),
            attempts=int(raw.get("attempts") or 0),
            next_at=float(raw["next_at"]) if raw.get("next_at") else None,
            redelivery_of=raw.get("redelivery_of") or None,
        )


def new_delivery_id() -> str:
    return "dlv_" + secrets.token_hex(12)


def event_delivery_id(msg_id: str) -> str:
    """The first delivery of an event: derived from its webhook-id, so creating it twice (a
    dispatcher that died before acknowledging) is a no-op."""
    return "dlv_" + hashlib.sha256(msg_id.encode()).hexdigest()[:24]


def url_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


class WebhookStore:
    """Deliveries, their schedule and their log. ``client`` decodes responses, as the job
    store's does (it may be the same client)."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._begin = client.register_script(_BEGIN)
        self._record = client.register_script(_RECORD)

    # --- the outbox (dispatchers) -----------------------------------------------------------

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(
                keys.webhook_outbox(), keys.WEBHOOK_OUTBOX_GROUP, id="0", mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_outbox(
        self, consumer: str, *, count: int, block_ms: int
    ) -> list[tuple[str, dict[str, str]]]:
        """New entries for this consumer; first the ones a dead consumer left unacknowledged."""
        stale = self.redis.xautoclaim(
            keys.webhook_outbox(),
            keys.WEBHOOK_OUTBOX_GROUP,
            consumer,
            min_idle_time=keys.WEBHOOK_OUTBOX_CLAIM_IDLE_MS,
            start_id="0-0",
            count=count,
        )[1]
        entries = [e for e in stale if e and e[1]]
        if not entries:
            answer = self.redis.xreadgroup(
                keys.WEBHOOK_OUTBOX_GROUP,
                consumer,
                {keys.webhook_outbox(): ">"},
                count=count,
                block=block_ms,
            )
            entries = answer[0][1] if answer else []
        return [(entry_id, fields) for entry_id, fields in entries]

    def ack_outbox(self, entry_ids: list[str]) -> None:
        if entry_ids:
            pipe = self.redis.pipeline()
            pipe.xack(keys.webhook_outbox(), keys.WEBHOOK_OUTBOX_GROUP, *entry_ids)
            pipe.xdel(keys.webhook_outbox(), *entry_ids)
            pipe.execute()

    # --- deliveries -------------------------------------------------------------------------

    def create(
        self,
        *,
        delivery_id: str,
        kind: str,
        subject: str,
        tenant: str,
        event: str,
        msg_id: str,
        url: str,
        body: bytes,
        due_at: float,
        redelivery_of: str | None = None,
    ) -> bool:
        """Store a delivery due at ``due_at``; False (and nothing changes) if it exists."""
        fields: dict[str, str] = {
            "id": delivery_id,
            "kind": kind,
            "subject": subject,
            "tenant": tenant,
            "event": event,
            "msg_id": msg_id,
            "url": url,
            "body": body.decode(),
            "created_at": repr(time.time()),
            "state": DeliveryState.PENDING.value,
            "attempts": "0",
            "next_at": repr(due_at),
        }
        if redelivery_of:
            fields["redelivery_of"] = redelivery_of
        pairs = [item for pair in fields.items() for item in pair]
        created = self._create(
            keys=[
                keys.webhook_delivery(delivery_id),
                keys.subject_webhooks(kind, subject),
                keys.webhook_due(),
            ],
            args=[delivery_id, self.ttl_s, repr(due_at), *pairs],
        )
        return bool(created)

    def get(self, delivery_id: str) -> Delivery | None:
        raw = self.redis.hgetall(keys.webhook_delivery(delivery_id))
        return Delivery.from_hash(raw) if raw else None

    def redeliver(self, delivery: Delivery) -> str:
        """A new delivery of the same message (same webhook-id, same body), due now."""
        delivery_id = new_delivery_id()
        self.create(
            delivery_id=delivery_id,
            kind=delivery.kind,
            subject=delivery.subject,
            tenant=delivery.tenant,
            event=delivery.event,
            msg_id=delivery.msg_id,
            url=delivery.url,
            body=delivery.body,
            due_at=time.time(),
            redelivery_of=delivery.id,
        )
        self.clear_gone(delivery.tenant, delivery.url)  # asked for explicitly: try the URL again
        return delivery_id

    # --- the schedule (pollers and attempts) ------------------------------------------------

    def claim_due(self, *, limit: int, lease_s: float) -> list[tuple[str, str]]:
        """Deliveries due now, each with a fresh claim token; re-scored to the lease's end."""
        now = time.time()
        flat = self._claim(
            keys=[keys.webhook_due()],
            args=[repr(now), limit, repr(now + lease_s), secrets.token_hex(8)],
        )
        return list(zip(flat[::2], flat[1::2], strict=True))

    def begin(self, delivery_id: str, token: str, *, lease_s: float) -> Delivery | None:
        """The delivery, if this token may make an attempt now (it holds the current claim)."""
        ok = self._begin(
            keys=[keys.webhook_delivery(delivery_id), keys.webhook_due()],
            args=[token, repr(time.time() + lease_s), delivery_id],
        )
        return self.get(delivery_id) if ok else None

    def record(
        self,
        delivery: Delivery,
        token: str,
        attempt: WebhookAttempt,
        outcome: DeliveryState | str,
        next_at: float | None,
    ) -> bool:
        """Log an attempt; then, if ``token`` is still current: ``retry`` at ``next_at``, or end
        the delivery ``delivered`` or ``failed``."""
        return bool(
            self._record(
                keys=[
                    keys.webhook_delivery(delivery.id),
                    keys.webhook_attempts(delivery.id),
                    keys.webhook_due(),
                ],
                args=[
                    token,
                    attempt.model_dump_json(),
                    str(outcome),
                    repr(next_at) if next_at is not None else "",
                    delivery.id,
                    self.ttl_s,
                ],
            )
        )

    def due_count(self) -> int:
        return self.redis.zcard(keys.webhook_due())

    # --- 410 Gone ---------------------------------------------------------------------------

    def mark_gone(self, tenant: str, url: str) -> None:
        self.redis.set(keys.webhook_gone(tenant, url_digest(url)), "1", ex=self.ttl_s)

    def is_gone(self, tenant: str, url: str) -> bool:
        return bool(self.redis.exists(keys.webhook_gone(tenant, url_digest(url))))

    def clear_gone(self, tenant: str, url: str) -> None:
        self.redis.delete(keys.webhook_gone(tenant, url_digest(url)))

    # --- secrets ----------------------------------------------------------------------------

    def tenant_secrets(self, tenant: str) -> list[bytes] | None:
        """The tenant's own signing keys (newest first), or None to use SDQ_WEBHOOK_SECRET."""
        raw = self.redis.get(keys.tenant_webhook_secrets(tenant))
        return decode_webhook_secrets(raw) if raw else None

    def set_tenant_secrets(self, tenant: str, values: list[str]) -> None:
        """Store a tenant's ``whsec_`` secrets (newest first); none: back to the global one."""
        if values:
            decode_webhook_secrets(",".join(values))
            self.redis.set(keys.tenant_webhook_secrets(tenant), ",".join(values))
        else:
            self.redis.delete(keys.tenant_webhook_secrets(tenant))

    # --- the log (API) ----------------------------------------------------------------------

    def deliveries(self, kind: str, subject: str) -> list[WebhookDelivery]:
        """Every delivery of a job's or batch's events, oldest first, with their attempts."""
        ids = self.redis.lrange(keys.subject_webhooks(kind, subject), 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hgetall(keys.webhook_delivery(delivery_id))
            pipe.lrange(keys.webhook_attempts(delivery_id), 0, -1)
        answers = pipe.execute()
        found = []
        for raw, attempts in zip(answers[::2], answers[1::2], strict=True):
            if raw:
                found.append(public(Delivery.from_hash(raw), attempts))
        return found


def public(delivery: Delivery, attempts: list[str]) -> WebhookDelivery:
    return WebhookDelivery(
        id=delivery.id,
        event=delivery.event,
        webhook_id=delivery.msg_id,
        url=delivery.url,
        state=delivery.state,
        created_at=_when(delivery.created_at),
        attempts=[WebhookAttempt.model_validate_json(a) for a in attempts],
        next_retry_at=_when(delivery.next_at) if delivery.state is DeliveryState.PENDING else None,
        redelivery_of=delivery.redelivery_of,
    )


def render(event: str, at: float, data: dict[str, Any]) -> bytes:
    """The body, exactly as it is signed and sent: ``{"type", "timestamp", "data"}``."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    # ASCII (non-ASCII as \u escapes): any text a job holds, even a lone surrogate, encodes.
    return json.dumps(
        {"type": event, "timestamp": stamp, "data": data}, separators=(",", ":")
    ).encode()
