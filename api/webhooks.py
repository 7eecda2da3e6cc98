"""Webhooks behind the routes: the check at submit time, the delivery log, redelivery."""

from __future__ import annotations

from api.deps import Services
from api.errors import ApiError
from common.schemas import WebhookSpec
from common.ssrf import UrlRefused, check_url
from common.webhooks import WebhookDelivery, WebhookDeliveryList, WebhookStore, public


def webhook_store(services: Services) -> WebhookStore:
    return WebhookStore(services.store.redis, ttl_s=services.settings.job_ttl_s)


def check(services: Services, tenant: str, webhook: WebhookSpec | None) -> None:
    """Refuse (422) a webhook that cannot be signed or whose URL is not a public receiver.

    Resolves the host, so call it off the event loop. A URL that a receiver had answered
    410 Gone for is given a fresh start: the client names it again on purpose.
    """
    if webhook is None:
        return
    store = webhook_store(services)
    if not services.settings.webhook_secrets and store.tenant_secrets(tenant) is None:
        raise ApiError(
            422,
            "webhooks_disabled",
            "this server has no webhook signing secret (SDQ_WEBHOOK_SECRET); "
            "submit without 'webhook'",
        )
    try:
        check_url(
            webhook.url,
            allow_http=services.settings.webhook_allow_http,
            allowed_hosts=services.settings.webhook_allowed_hosts,
        )
    except UrlRefused as exc:
        raise ApiError(
            422,
            "validation_error",
            f"webhook.url: {exc}",
            details=[{"field": "webhook.url", "message": str(exc), "type": "webhook_url"}],
        ) from exc
    store.clear_gone(tenant, webhook.url)


def deliveries(services: Services, kind: str, subject: str) -> WebhookDeliveryList:
    return WebhookDeliveryList(deliveries=webhook_store(services).deliveries(kind, subject))


def redeliver(services: Services, kind: str, subject: str, delivery_id: str) -> WebhookDelivery:
    """Send a delivery's message again (same webhook-id and body) as a new delivery, now."""
    store = webhook_store(services)
    delivery = store.get(delivery_id)
    if delivery is None or delivery.kind != kind or delivery.subject != subject:
        raise ApiError(
            404, "delivery_not_found", f"no webhook delivery {delivery_id!r} for this {kind}"
        )
    new = store.get(store.redeliver(delivery))
    assert new is not None
    return public(new, [])
