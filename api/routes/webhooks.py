"""Webhook delivery logs of jobs and batches, and redelivery."""

from __future__ import annotations

from fastapi import APIRouter

from api import batches, jobs, webhooks
from api.deps import ServicesDep, TenantDep
from common.schemas import ErrorResponse
from common.webhooks import WebhookDelivery, WebhookDeliveryList

router = APIRouter(tags=["webhooks"])

_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked API key"},
    404: {"model": ErrorResponse, "description": "No such job, batch or delivery"},
    503: {"model": ErrorResponse, "description": "Redis unavailable"},
}


@router.get("/v1/jobs/{job_id}/webhooks", response_model=WebhookDeliveryList, responses=_ERRORS)
def job_webhooks(job_id: str, services: ServicesDep, tenant: TenantDep) -> WebhookDeliveryList:
    """The job's webhook deliveries: event, webhook-id, state, every attempt, next retry."""
    jobs.load(services, tenant, job_id)
    return webhooks.deliveries(services, "job", job_id)


@router.post(
    "/v1/jobs/{job_id}/webhooks/{delivery_id}/redeliver",
    status_code=202,
    response_model=WebhookDelivery,
    responses=_ERRORS,
)
def redeliver_job_webhook(
    job_id: str, delivery_id: str, services: ServicesDep, tenant: TenantDep
) -> WebhookDelivery:
    """Send a delivery again now: a new delivery, same webhook-id and body, full retries."""
    jobs.load(services, tenant, job_id)
    return webhooks.redeliver(services, "job", job_id, delivery_id)


@router.get(
    "/v1/batches/{batch_id}/webhooks", response_model=WebhookDeliveryList, responses=_ERRORS
)
def batch_webhooks(batch_id: str, services: ServicesDep, tenant: TenantDep) -> WebhookDeliveryList:
    """The batch's webhook deliveries (batch.completed), with every attempt."""
    batches.load(services, tenant, batch_id)
    return webhooks.deliveries(services, "batch", batch_id)


@router.post(
    "/v1/batches/{batch_id}/webhooks/{delivery_id}/redeliver",
    status_code=202,
    response_model=WebhookDelivery,
    responses=_ERRORS,
)
def redeliver_batch_webhook(
    batch_id: str, delivery_id: str, services: ServicesDep, tenant: TenantDep
) -> WebhookDelivery:
    """Send a batch's delivery again now (same webhook-id and body)."""
    batches.load(services, tenant, batch_id)
    return webhooks.redeliver(services, "batch", batch_id, delivery_id)
