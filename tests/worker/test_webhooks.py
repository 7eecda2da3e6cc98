"""Webhook attempts against a real receiver on loopback: signatures the official library
verifies, the checked address and nothing else, one deadline, no redirects, the retry policy,
and claims that make a lost or repeated task harmless."""

from __future__ import annotations

import base64
import random
import secrets
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme
from standardwebhooks import Webhook

from common import keys, metrics
from common.jobstore import JobStore
from common.settings import Settings
from common.ssrf import check_url
from common.webhooks import DeliveryState, WebhookStore, new_delivery_id, render
from tests.receiver import Receiver, Reply
from worker.webhooks import Deliverer, next_delay, parse_retry_after, post, signed_headers


def whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _target(receiver: Receiver, path: str, host: str = "receiver.test"):
    # A name no DNS knows: reaching the receiver proves the checked address is what is used.
    return check_url(
        receiver.url(path, host=host),
        allow_http=True,
        allowed_hosts=[host],
        resolver=lambda name, port: ["127.0.0.1"],
    )


def test_signatures_verify_with_the_official_library_for_both_rotation_secrets(
    receiver: Receiver,
) -> None:
    old, new = whsec(), whsec()
    settings = Settings(env="dev", webhook_secret=f"{new},{old}")
    body = render("job.succeeded", time.time(), {"id": "j1", "status": "succeeded", "é": "ü"})
    headers = signed_headers(settings.webhook_secrets, "msg_j1_succeeded", body, now=time.time())

    answer = post(
        _target(receiver, "/sig"), headers, body, timeout_s=5, context=ssl.create_default_context()
    )

    assert answer.ok
    (got,) = receiver.received("/sig")
    assert got.body == body
    assert got.headers["host"] == f"receiver.test:{receiver.port}"
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        payload = Webhook(secret).verify(got.body, got.headers)
        assert payload["type"] == "job.succeeded"
        assert payload["data"]["é"] == "ü"
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(whsec()).verify(got.body, got.headers)


def test_redirects_are_answers_not_followed(receiver: Receiver) -> None:
    receiver.script("/moved", Reply(302, {"Location": "/elsewhere"}))
    answer = post(
        _target(receiver, "/moved"), {}, b"{}", timeout_s=5, context=ssl.create_default_context()
    )
    assert answer.status_code == 302
    assert not answer.ok
    assert receiver.received("/elsewhere") == []


def test_a_receiver_that_hangs_or_drips_is_cut_off_at_the_timeout(receiver: Receiver) -> None:
    release = threading.Event()
    receiver.script("/hang", Reply(hang=release))
    receiver.script("/drip", Reply(drip_s=0.2))  # a ~5 s status line, a byte at a time
    try:
        for path in ("/hang", "/drip"):
            answer = post(
                _target(receiver, path),
                {},
                b"{}",
                timeout_s=1,
                context=ssl.create_default_context(),
            )
            assert answer.status_code is None
            assert answer.error.startswith("timeout"), answer.error
    finally:
        release.set()


def test_https_keeps_the_name_for_sni_and_the_certificate_check() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    tls = Receiver(tls=server_context)
    try:
        good = post(
            _target(tls, "/tls", "hooks.test"), {}, b"{}", timeout_s=5, context=client_context
        )
        assert good.ok, good.error
        assert tls.received("/tls")[0].sni == "hooks.test"
        # The same address under a name the certificate does not carry: refused by TLS.
        bad = post(
            _target(tls, "/tls", "other.test"), {}, b"{}", timeout_s=5, context=client_context
        )
        assert bad.status_code is None
        assert "CERTIFICATE_VERIFY_FAILED" in bad.error or "certificate" in bad.error.lower()
    finally:
        tls.close()


def test_retry_schedule_jitter_and_retry_after() -> None:
    schedule = (0, 5, 300)
    rng = random.Random(1)
    delays = [next_delay(schedule, n, rng=rng) for n in (1, 2)]
    assert 4 <= delays[0] <= 6
    assert 240 <= delays[1] <= 360
    assert next_delay(schedule, 3) is None  # three attempts: the schedule is used up
    assert next_delay(schedule, 1, retry_after_s=120) == 120
    assert next_delay(schedule, 1, retry_after_s=10**9) == keys.WEBHOOK_MAX_RETRY_AFTER_S
    assert parse_retry_after("7", 0) == 7
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40) == 60
    assert parse_retry_after("soon", 0) is None


# --- deliveries on a real Redis ---------------------------------------------------------------


@pytest.fixture
def deliverer(redis_server, receiver: Receiver) -> Deliverer:
    settings = Settings(
        env="dev",
        webhook_secret=whsec(),
        webhook_allow_http=True,
        webhook_allowed_hosts=("receiver.test",),
        webhook_retry_schedule=(0, 0, 0),
        webhook_timeout_s=5,
    )
    jobs = JobStore.from_url(redis_server.extra["url"], job_ttl_s=600, idempotency_ttl_s=600)
    return Deliverer(
        settings,
        WebhookStore(jobs.redis, ttl_s=600),
        resolver=lambda name, port: ["127.0.0.1"],
        rng=random.Random(0),
    )


def _delivery(deliverer: Deliverer, receiver: Receiver, path: str) -> str:
    delivery_id = new_delivery_id()
    deliverer.webhooks.create(
        delivery_id=delivery_id,
        kind="job",
        subject=f"job-{delivery_id}",
        tenant="t-hooks",
        event="job.succeeded",
        msg_id=f"msg_{delivery_id}",
        url=receiver.url(path, host="receiver.test"),
        body=b'{"type":"job.succeeded"}',
        due_at=time.time(),
    )
    return delivery_id


def _counted(outcome: str) -> float:
    return metrics.WEBHOOK_DELIVERIES.labels(event="job.succeeded", outcome=outcome)._value.get()


def _claim(deliverer: Deliverer, delivery_id: str, lease_s: float = 60) -> str:
    claims = dict(deliverer.webhooks.claim_due(limit=1000, lease_s=lease_s))
    return claims[delivery_id]


def test_fails_twice_then_succeeds_three_attempts_one_webhook_id(
    deliverer: Deliverer, receiver: Receiver
) -> None:
    receiver.script("/flaky", Reply(500), Reply(502))
    delivery_id = _delivery(deliverer, receiver, "/flaky")
    before = {o: _counted(o) for o in ("retry", "delivered")}
    states = [deliverer.deliver(delivery_id, _claim(deliverer, delivery_id)) for _ in range(3)]
    assert {o: _counted(o) - n for o, n in before.items()} == {"retry": 2, "delivered": 1}

    assert states == [DeliveryState.PENDING, DeliveryState.PENDING, DeliveryState.DELIVERED]
    got = receiver.received("/flaky")
    assert len(got) == 3
    assert {r.headers["webhook-id"] for r in got} == {f"msg_{delivery_id}"}
    (log,) = deliverer.webhooks.deliveries("job", f"job-{delivery_id}")
    assert [a.status_code for a in log.attempts] == [500, 502, 200]
    assert log.state is DeliveryState.DELIVERED
    assert log.next_retry_at is None
    assert deliverer.webhooks.redis.zscore(keys.webhook_due(), delivery_id) is None


def test_gives_up_when_the_schedule_is_used_up(deliverer: Deliverer, receiver: Receiver) -> None:
    receiver.script("/down", Reply(500), Reply(500), Reply(500), Reply(500))
    delivery_id = _delivery(deliverer, receiver, "/down")
    states = [deliverer.deliver(delivery_id, _claim(deliverer, delivery_id)) for _ in range(3)]
    assert states[-1] is DeliveryState.FAILED
    assert deliverer.webhooks.redis.zscore(keys.webhook_due(), delivery_id) is None
    assert len(receiver.received("/down")) == 3


def test_410_stops_retries_for_that_url(deliverer: Deliverer, receiver: Receiver) -> None:
    receiver.script("/gone", Reply(410))
    first = _delivery(deliverer, receiver, "/gone")
    assert deliverer.deliver(first, _claim(deliverer, first)) is DeliveryState.FAILED
    later = _delivery(deliverer, receiver, "/gone")  # another event for the same URL
    assert deliverer.deliver(later, _claim(deliverer, later)) is DeliveryState.FAILED
    assert len(receiver.received("/gone")) == 1
    (log,) = deliverer.webhooks.deliveries("job", f"job-{later}")
    assert "410" in log.attempts[0].error


def test_a_stale_or_repeated_task_sends_nothing(deliverer: Deliverer, receiver: Receiver) -> None:
    delivery_id = _delivery(deliverer, receiver, "/once")
    lost = _claim(deliverer, delivery_id, lease_s=0)  # its task was lost: due again at once
    current = _claim(deliverer, delivery_id)
    assert deliverer.deliver(delivery_id, lost) is None
    assert deliverer.deliver(delivery_id, current) is DeliveryState.DELIVERED
    assert deliverer.deliver(delivery_id, current) is None  # the broker redelivered the task
    assert len(receiver.received("/once")) == 1
