"""Celery tasks of the provenance app: thin wrappers around services."""

from __future__ import annotations

import logging

from celery import shared_task

from governance.services import audit_events_record
from provenance import services
from provenance.integrity import snapshots_verify
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


@shared_task(name="provenance.verify_snapshots")
def verify_snapshots() -> dict:
    """Periodic (Celery beat) integrity check of every snapshot against its records.

    Each failure is an audit event of its own and an error in the log; one summary event
    per run is recorded even when all pass, so gaps in checking show in the audit log.
    """
    results = snapshots_verify()
    failed = [r for r in results if not r.ok]
    events = []
    for result in failed:
        logger.error("snapshot %s fails verification: %s", result.snapshot_id, result.first_difference)
        events.append({
            "actor": "celery-beat", "action": "snapshot.verification_failed", "object_type": "snapshot",
            "object_id": result.snapshot_id,
            "details": {"first_difference": result.first_difference, "checked_members": result.checked_members},
        })
    events.append({
        "actor": "celery-beat", "action": "snapshots.verified", "object_type": "snapshot", "object_id": "",
        "details": {
            "snapshots": len(results), "failed": [r.snapshot_id for r in failed],
            "members": sum(r.checked_members for r in results),
        },
    })
    # One batch, one transaction: the failures and the summary are appended together or not at all.
    audit_events_record(events=events)
    return {"snapshots": len(results), "failed": [r.snapshot_id for r in failed]}
