"""Celery task of the decisions app: thin, calls the service."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="decisions.purge")
def purge() -> dict:
    """Daily: delete decision inputs past their retention and the decision log past
    DECISION_LOG_RETENTION_DAYS (idempotent)."""
    from decisions.services import decisions_purge

    return decisions_purge()
