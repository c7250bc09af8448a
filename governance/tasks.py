"""Celery tasks of the governance app: thin wrappers that call services and selectors."""

from __future__ import annotations

import logging

from celery import shared_task

from governance import services
from governance.selectors import audit_chain_verify

logger = logging.getLogger(__name__)


@shared_task(name="governance.verify_audit_chain")
def verify_audit_chain() -> dict:
    """Periodic integrity check of the audit log; a broken chain is logged as an error."""
    result = audit_chain_verify()
    services.audit_chain_verification_record(
        ok=result.ok, checked=result.checked, broken_position=result.broken_position, reason=result.reason
    )
    if not result.ok:
        logger.error("audit chain broken at position %s: %s", result.broken_position, result.reason)
    return {"ok": result.ok, "checked": result.checked, "broken_position": result.broken_position}


@shared_task(name="governance.redispatch_stalled_work")
def redispatch_stalled_work() -> dict:
    """The outbox sweeper: re-send work never sent, lost, or left by a dead worker."""
    from governance.dispatch import stalled_work_redispatch

    return stalled_work_redispatch()
