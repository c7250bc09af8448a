"""Celery tasks of the provenance app: thin wrappers around services."""

from __future__ import annotations

from celery import shared_task

from provenance import services


@shared_task(name="provenance.retention_purge")
def retention_purge() -> dict:
    """Periodic (Celery beat) deletion of records whose retention period has passed (Art. 5(1)(e))."""
    return services.retention_purge(actor="celery-beat")
