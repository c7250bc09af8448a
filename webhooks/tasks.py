"""Celery tasks of the webhooks app: thin, each calls the service."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="webhooks.deliver", acks_late=True)
def deliver(delivery_pk: int) -> str:
    """One attempt at a delivery; a copy for a delivery done or not due does nothing."""
    from webhooks.services import webhook_delivery_attempt

    return webhook_delivery_attempt(delivery_pk=delivery_pk)


@shared_task(name="webhooks.deliveries_sweep")
def deliveries_sweep() -> int:
    """Beat: re-send pending deliveries whose attempt is overdue (a worker died, a message was lost)."""
    from webhooks.services import webhook_deliveries_sweep

    return webhook_deliveries_sweep()
