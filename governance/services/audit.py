"""The one writer of the tamper-evident audit chain: every service of every app appends
its event through ``audit_event_record``, under the chain-head lock.

The hashing itself lives in ``governance.audit`` (imported here as ``audit``); this module
only writes rows. It depends on ``errors`` alone, so any service may import it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance import audit, audit_anchor, checkpoints
from governance.models import AuditChainHead, AuditEvent
from governance.services.errors import SYSTEM_ACTOR, ServiceConflict, _actor_name

logger = logging.getLogger(__name__)


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
    every = settings.AUDIT_CHECKPOINT_EVERY_EVENTS
    if every > 0 and position % every == 0:
        # After the commit, so a chain that is rolled back is never anchored; the checkpoint
        # then signs the committed head, which may already be past this event.
        transaction.on_commit(_checkpoint_after_commit)
    return event


def audit_chain_verification_record(*, ok: bool, checked: int, broken_position: int | None, reason: str) -> AuditEvent:
    """Record the outcome of a periodic verification in the chain itself, so gaps in checking show."""
    return audit_event_record(
        actor=SYSTEM_ACTOR,
        action="audit.verified" if ok else "audit.verification_failed",
        object_type="audit_chain",
        details={"checked": checked, "broken_position": broken_position, "reason": reason},
    )


# --- Signed checkpoints (governance.checkpoints) -----------------------------------------------


def _checkpoint_after_commit() -> None:
    # The events are committed whatever happens here: a checkpoint that cannot be written is
    # logged (audit_verify then reports it missing), never raised into the caller's request.
    try:
        audit_checkpoint_write(reason="events")
    except Exception:
        logger.exception("audit checkpoint after %s events not written", settings.AUDIT_CHECKPOINT_EVERY_EVENTS)


def _committed_head() -> tuple[int, str]:
    head = AuditChainHead.objects.filter(pk=1).values_list("position", "hash").first()
    return head or (0, audit.GENESIS_HASH)


def audit_checkpoint_write(*, reason: str = "manual", only_if_moved: bool = True) -> checkpoints.Checkpoint | None:
    """Sign the committed chain head and append it to the checkpoint file; returns it, or
    None when the chain is empty (or, with ``only_if_moved``, the last checkpoint is of this
    very head).

    Called outside any transaction (after a commit, from the beat task or the command), so
    the head it reads is committed. The file lock is held from reading the head to the
    append, so checkpoints of concurrent writers are in the order of their positions.
    """
    if transaction.get_connection().in_atomic_block:
        raise ServiceConflict(
            "An audit checkpoint is written after the commit (transaction.on_commit), never inside a transaction: "
            "it would anchor events that may still be rolled back."
        )
    key = _signing_key_or_conflict()
    with audit_anchor.checkpoint_file().locked() as appender:
        position, digest = _committed_head()
        if position == 0:
            return None
        last = appender.last()
        # A head that went back is signed too: the verifier then sees the chain went backwards.
        if only_if_moved and last is not None and (last.position, last.hash) == (position, digest):
            return None
        cp = checkpoints.checkpoint_sign(private_key=key, position=position, hash=digest, reason=reason)
        appender.append(cp)
    return cp


def audit_checkpoint_sign_head(*, reason: str) -> checkpoints.Checkpoint:
    """Sign the chain head this transaction sees, now, and append it to the file when the
    transaction commits: for a document (an erasure certificate) that prints the checkpoint
    covering its events. A rollback discards both the document and the checkpoint.
    """
    key = _signing_key_or_conflict()
    position, digest = _committed_head()
    cp = checkpoints.checkpoint_sign(private_key=key, position=position, hash=digest, reason=reason)

    def append() -> None:
        try:
            audit_anchor.checkpoint_file().append(cp)
        except Exception:
            logger.exception("audit checkpoint at position %s (%s) not appended to the file", position, reason)

    transaction.on_commit(append)
    return cp


def _signing_key_or_conflict():
    try:
        return audit_anchor.signing_key()
    except audit_anchor.AuditSigningKeyMissing as exc:
        raise ServiceConflict(str(exc)) from exc
