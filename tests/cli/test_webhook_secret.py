"""``sdq webhook-secret``: a tenant's own signing secret overrides the global one, and a
rotation signs with both until the old one is dropped."""

from __future__ import annotations

import base64
import secrets
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from common.jobstore import JobStore
from common.settings import Settings
from common.webhooks import WebhookStore, new_delivery_id
from tests.cli.test_keys import sdq
from tests.receiver import Receiver
from worker.webhooks import Deliverer

TENANT = "t-own-secret"


def _send(deliverer: Deliverer, receiver: Receiver, path: str) -> dict[str, str]:
    delivery_id = new_delivery_id()
    deliverer.webhooks.create(
        delivery_id=delivery_id,
        kind="job",
        subject="j",
        tenant=TENANT,
        event="job.succeeded",
        msg_id=f"msg_{delivery_id}",
        url=receiver.url(path),
        body=b"{}",
        due_at=time.time(),
    )
    (token,) = [
        t for d, t in deliverer.webhooks.claim_due(limit=1000, lease_s=60) if d == delivery_id
    ]
    deliverer.deliver(delivery_id, token)
    (request,) = receiver.received(path)
    return request.headers


def _verifies(secret: str, headers: dict[str, str]) -> bool:
    try:
        Webhook(secret).verify(b"{}", headers)
    except WebhookVerificationError:
        return False
    return True


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def test_tenant_secret_rotation(redis_server, sdq_env: dict[str, str], receiver: Receiver) -> None:
    global_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    settings = Settings(
        env="dev",
        webhook_secret=global_secret,
        webhook_allow_http=True,
        webhook_allowed_hosts=("127.0.0.1",),
    )
    jobs = JobStore.from_url(redis_server.extra["url"], job_ttl_s=600, idempotency_ttl_s=600)
    deliverer = Deliverer(settings, WebhookStore(jobs.redis, ttl_s=600))

    first = sdq(sdq_env, "webhook-secret", "new", "--tenant", TENANT)
    assert first.returncode == 0, first.stderr
    (old,) = first.stdout.split()
    headers = _send(deliverer, receiver, "/one")
    assert _verifies(old, headers)
    assert not _verifies(global_secret, headers)

    second = sdq(sdq_env, "webhook-secret", "new", "--tenant", TENANT)
    (new,) = second.stdout.split()
    headers = _send(deliverer, receiver, "/two")
    assert _verifies(new, headers)
    assert _verifies(old, headers)  # receivers that still hold the old one keep working

    assert sdq(sdq_env, "webhook-secret", "drop-old", "--tenant", TENANT).returncode == 0
    headers = _send(deliverer, receiver, "/three")
    assert _verifies(new, headers)
    assert not _verifies(old, headers)

    deliverer.webhooks.set_tenant_secrets(TENANT, [])  # 'clear': the global one again
    assert _verifies(global_secret, _send(deliverer, receiver, "/four"))
