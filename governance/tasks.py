"""Celery tasks of the governance app: thin wrappers that call services and selectors."""

from __future__ import annotations

import logging

from celery import shared_task

from governance import services
from governance.audit_anchor import audit_chain_anchored_verify
from governance.services.audit import audit_checkpoint_write

logger = logging.getLogger(__name__)


@shared_task(name="governance.verify_audit_chain")
def verify_audit_chain() -> dict:
    """Periodic integrity check of the audit log and its signed checkpoints; a broken chain is
    logged as an error."""
    result = audit_chain_anchored_verify()
    services.audit_chain_verification_record(
        ok=result.ok, checked=result.checked, broken_position=result.broken_position, reason=result.reason
    )
    if not result.ok:
        logger.error("audit chain broken at position %s: %s", result.broken_position, result.reason)
    return {"ok": result.ok, "checked": result.checked, "broken_position": result.broken_position}


@shared_task(name="governance.audit_checkpoint")
def audit_checkpoint() -> dict:
    """Every AUDIT_CHECKPOINT_EVERY_MINUTES: sign the chain head if it moved since the last checkpoint."""
    cp = audit_checkpoint_write(reason="interval")
    return {"written": cp is not None, "position": cp.position if cp else None}


@shared_task(name="governance.redispatch_stalled_work")
def redispatch_stalled_work() -> dict:
    """The outbox sweeper: re-send work never sent, lost, or left by a dead worker."""
    from governance.dispatch import stalled_work_redispatch

    return stalled_work_redispatch()
