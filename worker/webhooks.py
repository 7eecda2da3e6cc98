"""Webhook delivery, on CPU workers of their own queue: a GPU worker only appends an event to
the outbox (in the Lua script of the transition) and moves on, whatever the receiver does.

Here: signing (Standard Webhooks), the HTTP attempt (to the address that was checked, within
one deadline, no redirects), the retry policy, and the two loops every webhook worker runs —
the dispatcher (outbox entries to deliveries) and the poller (due deliveries to tasks). The
mechanism that makes retries survive restarts without duplicates is in common/webhooks.py.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import certifi
import httpcore
import redis

from api.batches import batch_public
from api.views import job_public
from common import keys, metrics
from common.batches import BatchNotFound, BatchRecord, BatchStore
from common.jobstore import JobRecord, JobStore
from common.settings import Settings
from common.ssrf import Resolver, Target, UrlRefused, check_url, system_resolver
from common.storage import Storage
from common.webhooks import (
    Delivery,
    DeliveryState,
    WebhookAttempt,
    WebhookStore,
    event_delivery_id,
    render,
)

log = logging.getLogger(__name__)

USER_AGENT = "sdq-webhooks/1"
RETRY_AFTER_STATUSES = frozenset({429, 503})
GONE = 410


# --- signing --------------------------------------------------------------------------------


def signature(secrets: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` per secret,
    space-separated, so receivers with either secret of a rotation verify it."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in secrets
    )


def signed_headers(secrets: list[bytes], msg_id: str, body: bytes, *, now: float) -> dict[str, str]:
    timestamp = int(now)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secrets, msg_id, timestamp, body),
    }


# --- the retry policy -------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def next_delay(
    schedule: tuple[float, ...],
    attempts_made: int,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones, or None when the
    schedule is used up. Jittered, and never sooner than a receiver's Retry-After."""
    if attempts_made >= len(schedule):
        return None
    jitter = (rng or random).uniform(1 - keys.WEBHOOK_RETRY_JITTER, 1 + keys.WEBHOOK_RETRY_JITTER)
    delay = schedule[attempts_made] * jitter
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, keys.WEBHOOK_MAX_RETRY_AFTER_S))
    return delay


# --- one HTTP attempt -----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one attempt got: a status (and Retry-After), or an error."""

    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _DeadlineStream(httpcore.NetworkStream):
    """Every read and write of the connection shares one deadline: a receiver that answers a
    byte at a time cannot hold a delivery thread past the timeout."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream, self._deadline = stream, deadline

    def _left(self, timeout: float | None) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the receiver did not answer within the webhook timeout")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._left(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._stream.start_tls(ssl_context, server_hostname, self._left(timeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the checked addresses, never to what the host name resolves to now: the
    URL (Host header, TLS SNI and certificate check) keeps the name."""

    def __init__(self, addresses: tuple[str, ...], deadline: float) -> None:
        self._addresses, self._deadline = addresses, deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[tuple] | None = None,
    ) -> httpcore.NetworkStream:
        failure: Exception = httpcore.ConnectError("no address to connect to")
        for address in self._addresses:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ConnectTimeout("no connection within the webhook timeout")
            try:
                stream = self._inner.connect_tcp(
                    address, port, min(timeout or left, left), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise failure

    def connect_unix_socket(self, *args: object, **kwargs: object) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook receivers")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def ssl_context() -> ssl.SSLContext:
    """The system's CAs plus certifi's (as httpx trusts), hostname checks on."""
    context = ssl.create_default_context()
    context.load_verify_locations(certifi.where())
    return context


def _request_url(target: Target) -> httpcore.URL:
    parts = urlsplit(target.url)
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return httpcore.URL(
        scheme=target.scheme.encode(),
        host=target.host.encode(),
        port=target.port,
        target=(path + (f"?{query}" if query else "")).encode(),
    )


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def post(
    target: Target,
    headers: dict[str, str],
    body: bytes,
    *,
    timeout_s: float,
    context: ssl.SSLContext,
) -> Answer:
    """One POST, everything (connect, TLS, send, answer) within ``timeout_s``; no redirects
    (a 3xx is an answer like any other), no proxies from the environment."""
    deadline = time.monotonic() + timeout_s
    backend = _PinnedBackend(target.addresses, deadline)
    timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    sent = [("host", _host_header(target)), *headers.items()]
    try:
        with (
            httpcore.ConnectionPool(
                ssl_context=context, network_backend=backend, max_connections=1, retries=0
            ) as pool,
            pool.stream(
                "POST",
                _request_url(target),
                headers=sent,
                content=body,
                extensions={"timeout": timeouts},
            ) as response,
        ):
            read = 0
            for chunk in response.iter_stream():  # read (and drop) a little of the answer
                read += len(chunk)
                if read >= keys.WEBHOOK_MAX_RESPONSE_BYTES:
                    break
            retry_after = None
            if response.status in RETRY_AFTER_STATUSES:
                value = _header(response.headers, b"retry-after")
                retry_after = parse_retry_after(value, time.time())
            return Answer(status_code=response.status, retry_after_s=retry_after)
    except httpcore.TimeoutException:
        return Answer(error=f"timeout: no answer within {timeout_s:g}s")
    except (httpcore.NetworkError, httpcore.ProtocolError, ssl.SSLError, OSError) as exc:
        return Answer(error=f"connection failed: {type(exc).__name__}: {exc}"[:300])


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


# --- one delivery attempt (the Celery task's body) -------------------------------------------


@dataclass
class Deliverer:
    """What a webhook worker process needs to make attempts; shared by its threads."""

    settings: Settings
    webhooks: WebhookStore
    resolver: Resolver = system_resolver
    context: ssl.SSLContext | None = None
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        if self.context is None:
            self.context = ssl_context()

    @property
    def attempt_lease_s(self) -> float:
        return self.settings.webhook_timeout_s + keys.WEBHOOK_CLAIM_LEASE_S

    def deliver(self, delivery_id: str, token: str) -> DeliveryState | None:
        """Make the attempt the claim ``token`` stands for; None if that claim is stale (a
        duplicate or late message) and nothing was sent."""
        delivery = self.webhooks.begin(delivery_id, token, lease_s=self.attempt_lease_s)
        if delivery is None:
            log.info("webhook delivery %s: claim %s is stale; nothing sent", delivery_id, token)
            return None
        started = time.time()
        answer, final = self._send(delivery, started)
        n = delivery.attempts + 1
        delay = None
        if not answer.ok and not final:
            delay = next_delay(
                self.settings.webhook_retry_schedule, n, answer.retry_after_s, self.rng
            )
        if answer.ok:
            outcome = DeliveryState.DELIVERED
        elif delay is None:
            outcome = DeliveryState.FAILED
        else:
            outcome = "retry"
        next_at = time.time() + delay if delay is not None else None
        attempt = WebhookAttempt(
            n=n,
            at=started,
            status_code=answer.status_code,
            error=answer.error,
            duration_ms=round((time.time() - started) * 1000),
            next_retry_at=next_at,
        )
        self.webhooks.record(delivery, token, attempt, outcome, next_at)
        if answer.status_code == GONE:
            self.webhooks.mark_gone(delivery.tenant, delivery.url)
        counted = "retry" if outcome == "retry" else str(outcome)
        metrics.webhook_delivery(delivery.event, counted)
        log.info(
            "webhook %s %s (%s) attempt %d: %s -> %s",
            delivery.id,
            delivery.event,
            delivery.msg_id,
            n,
            answer.status_code or answer.error,
            counted,
            extra={"job_id": delivery.subject} if delivery.kind == "job" else None,
        )
        return DeliveryState.PENDING if outcome == "retry" else DeliveryState(outcome)

    def _send(self, delivery: Delivery, now: float) -> tuple[Answer, bool]:
        """The answer, and whether it ends the delivery whatever the schedule says."""
        if self.webhooks.is_gone(delivery.tenant, delivery.url):
            return Answer(error="not sent: this URL answered 410 Gone to an earlier delivery"), True
        secrets = self.webhooks.tenant_secrets(delivery.tenant) or self.settings.webhook_secrets
        if not secrets:
            return Answer(error="not sent: no signing secret is configured"), False
        try:
            target = check_url(
                delivery.url,
                allow_http=self.settings.webhook_allow_http,
                allowed_hosts=self.settings.webhook_allowed_hosts,
                resolver=self.resolver,
            )
        except UrlRefused as exc:  # its DNS changed since submit, or the operator's settings
            return Answer(error=f"not sent: {exc}"), False
        headers = signed_headers(secrets, delivery.msg_id, delivery.body, now=now)
        answer = post(
            target,
            headers,
            delivery.body,
            timeout_s=self.settings.webhook_timeout_s,
            context=self.context,
        )
        return answer, answer.status_code == GONE


# --- dispatcher and poller (threads of every webhook worker) ----------------------------------


class Dispatcher:
    """Turns outbox entries into deliveries: renders the body (the job as GET /v1/jobs/{id}
    shows it, or the batch) once, so every attempt sends the same bytes."""

    def __init__(
        self,
        settings: Settings,
        webhooks: WebhookStore,
        jobs: JobStore,
        storage: Storage,
        consumer: str,
        on_created: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings, self.webhooks, self.jobs, self.storage = settings, webhooks, jobs, storage
        self.consumer = consumer
        self._on_created = on_created

    def run_once(self, block_ms: int) -> int:
        """Dispatch what the outbox holds (waiting up to ``block_ms``); returns how many."""
        entries = self.webhooks.read_outbox(self.consumer, count=100, block_ms=block_ms)
        done = []
        for entry_id, fields in entries:
            try:
                self.dispatch(fields)
            except redis.RedisError:
                raise  # not acknowledged: this entry is read again
            except Exception:
                log.exception(
                    "webhook event %s could not be dispatched; dropped", fields.get("msg")
                )
            done.append(entry_id)
        self.webhooks.ack_outbox(done)
        if done:
            self._on_created()
        return len(done)

    def dispatch(self, fields: dict[str, str]) -> bool:
        event, msg_id, at = fields["event"], fields["msg"], float(fields["at"])
        if fields["kind"] == "job":
            record = JobRecord.from_hash(json.loads(fields["snapshot"]))
            data = _job_data(record, self.jobs, self.storage)
            tenant, webhook = record.tenant, record.webhook
        else:
            batches = BatchStore(self.jobs, self.storage, ttl_s=self.settings.job_ttl_s)
            try:
                batch = batches.get(fields["subject"])
            except BatchNotFound:
                log.warning("batch %s is gone; its %s is not sent", fields["subject"], event)
                return False
            data = _batch_data(batches, self.storage, batch)
            tenant, webhook = batch.tenant, batch.webhook
        if webhook is None:
            return False
        return self.webhooks.create(
            delivery_id=event_delivery_id(msg_id),
            kind=fields["kind"],
            subject=fields["subject"],
            tenant=tenant,
            event=event,
            msg_id=msg_id,
            url=webhook.url,
            body=render(event, at, data),
            due_at=time.time(),
        )


def _job_data(record: JobRecord, jobs: JobStore, storage: Storage) -> dict:
    # api.views is the one place a job becomes what clients see: GET and webhooks agree.
    return job_public(record, jobs, storage).model_dump(mode="json")


def _batch_data(batches: BatchStore, storage: Storage, batch: BatchRecord) -> dict:
    return batch_public(batches, storage, batch).model_dump(mode="json")


class Poller:
    """Claims due deliveries and sends one task each to the webhooks queue."""

    def __init__(
        self,
        settings: Settings,
        webhooks: WebhookStore,
        send: Callable[[str, str], None],
        backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self.settings, self.webhooks = settings, webhooks
        self._send, self._backlog = send, backlog

    def run_once(self) -> int:
        # Claims wait for a free thread in the broker; past a few rounds' worth, claim none and
        # leave the rest in Redis, where they are cheaper and their order is kept.
        room = 4 * self.settings.webhook_concurrency - self._backlog()
        if room <= 0:
            return 0
        claims = self.webhooks.claim_due(
            limit=min(room, keys.WEBHOOK_CLAIM_BATCH), lease_s=keys.WEBHOOK_CLAIM_LEASE_S
        )
        for delivery_id, token in claims:
            self._send(delivery_id, token)
        return len(claims)


class Loops:
    """The dispatcher and poller threads of one webhook worker process, and its heartbeat."""

    def __init__(self, dispatcher: Dispatcher, poller: Poller, beat: Callable[[], None]) -> None:
        self.dispatcher, self.poller, self._beat = dispatcher, poller, beat
        interval = dispatcher.settings.webhook_poll_interval_s
        self._interval_s = min(interval, dispatcher.settings.heartbeat_interval_s)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._dispatch_loop, name="webhook-dispatch", daemon=True),
            threading.Thread(target=self._poll_loop, name="webhook-poll", daemon=True),
        ]

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _dispatch_loop(self) -> None:
        # Short blocks: the client's socket timeout must outlast a blocking read.
        block_ms = max(1, int(min(self._interval_s, 2.0) * 1000))
        while not self._stop.is_set():
            try:
                self.dispatcher.webhooks.ensure_group()
                while not self._stop.is_set():
                    self.dispatcher.run_once(block_ms)
            except redis.RedisError as exc:
                log.warning("webhook dispatcher: %s; retrying", exc)
                self._stop.wait(self._interval_s)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._beat()
                self.poller.run_once()
            except Exception as exc:  # Redis or the broker away: the claims come back by lease
                log.warning("webhook poller: %s; retrying", exc)
            self._wake.wait(self._interval_s)
            self._wake.clear()


def process_name(node: str) -> str:
    return f"{node}:{os.getpid()}"
