"""The one writer of the tamper-evident audit chain: every service of every app appends
its event through ``audit_event_record``, under the chain-head lock.

The hashing itself lives in ``governance.audit`` (imported here as ``audit``); this module
only writes rows. It depends on ``errors`` alone, so any service may import it.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from governance import audit
from governance.models import AuditChainHead, AuditEvent
from governance.services.errors import SYSTEM_ACTOR, _actor_name


def _lock_chain_head() -> AuditChainHead:
    head = AuditChainHead.objects.select_for_update().filter(pk=1).first()
    if head is None:
        try:
            with transaction.atomic():
                AuditChainHead.objects.create(pk=1)
        except IntegrityError:
            pass  # another writer created it first; lock theirs
        head = AuditChainHead.objects.select_for_update().get(pk=1)
    return head


def audit_event_record(
    *,
    actor: Any,
    action: str,
    object_type: str = "",
    object_id: Any = "",
    subject_ref: Any = None,
    details: dict | None = None,
) -> AuditEvent:
    """Append one event to the audit chain, inside the caller's transaction.

    The chain head row is locked first, so concurrent writers queue instead of forking.
    Never pass a raw identifier or a pseudonym: refer to a person by ``subject_ref``.
    """
    # Round-trip through JSON so the stored details hash the same when read back.
    details = json.loads(audit.canonical_json(details or {}))
    # No savepoint: the event belongs to the caller's transaction, and thousands of
    # savepoints in one transaction overflow PostgreSQL's subtransaction cache.
    with transaction.atomic(savepoint=False):
        head = _lock_chain_head()
        position = head.position + 1
        occurred_at = timezone.now()
        fields = audit.event_fields(
            position=position,
            occurred_at=occurred_at,
            actor=_actor_name(actor),
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            subject_ref=subject_ref,
            details=details,
        )
        digest = audit.chain_hash(head.hash, fields)
        event = AuditEvent.objects.create(
            position=position,
            prev_hash=head.hash,
            hash=digest,
            occurred_at=occurred_at,
            actor=fields["actor"],
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            subject_ref=subject_ref,
            details=details,
        )
        AuditChainHead.objects.filter(pk=1).update(position=position, hash=digest)
    return event


def audit_chain_verification_record(*, ok: bool, checked: int, broken_position: int | None, reason: str) -> AuditEvent:
    """Record the outcome of a periodic verification in the chain itself, so gaps in checking show."""
    return audit_event_record(
        actor=SYSTEM_ACTOR,
        action="audit.verified" if ok else "audit.verification_failed",
        object_type="audit_chain",
        details={"checked": checked, "broken_position": broken_position, "reason": reason},
    )
