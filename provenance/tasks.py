"""Celery tasks of the provenance app: thin wrappers around services."""

from __future__ import annotations

import logging

from celery import shared_task

from provenance import services
from provenance.models import Snapshot

logger = logging.getLogger(__name__)


@shared_task(name="provenance.retention_purge")
def retention_purge() -> dict:
    """Periodic (Celery beat) deletion of records whose retention period has passed (Art. 5(1)(e))."""
    return services.retention_purge(actor="celery-beat")


@shared_task(name="provenance.snapshot_openlineage_emit")
def snapshot_openlineage_emit(snapshot_id: int) -> bool:
    """Send the START and COMPLETE OpenLineage events of a snapshot's creation.

    Best effort: a failure is logged, and the same events stay downloadable from
    /api/v1/snapshots/{id}/openlineage/ (they are rebuilt from the stored snapshot).
    """
    from provenance.lineage_exports import openlineage_emit_snapshot

    snapshot = Snapshot.objects.select_related("dataset").filter(pk=snapshot_id).first()
    if snapshot is None:
        return False
    try:
        openlineage_emit_snapshot(snapshot=snapshot)
    except Exception:  # the backend's failure must not fail the worker loop; see docstring
        logger.exception("OpenLineage events for snapshot %s could not be sent", snapshot_id)
        return False
    return True
