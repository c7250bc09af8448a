"""Selectors that read governance records."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from governance import audit
from governance.models import ApiKey, AuditChainHead, AuditEvent, Purpose


def api_key_authenticate(*, raw_key: str) -> tuple[ApiKey | None, str]:
    """Return (key, "") for a valid key, or (None, reason)."""
    key_hash = hashlib.sha256(raw_key.encode()).hexdigest()
    api_key = ApiKey.objects.select_related("user").filter(key_hash=key_hash).first()
    if api_key is None:
        return None, "Invalid API key."
    if api_key.revoked_at is not None:
        return None, "This API key has been revoked."
    if api_key.expires_at is not None and api_key.expires_at <= timezone.now():
        return None, "This API key has expired."
    if not api_key.user.is_active:
        return None, "The user of this API key is inactive."
    from governance.services import api_key_mark_used

    api_key_mark_used(api_key=api_key)
    return api_key, ""


@dataclass(frozen=True)
class ChainVerification:
    checked: int
    ok: bool
    broken_position: int | None = None
    reason: str = ""
    head_hash: str = audit.GENESIS_HASH


def audit_chain_verify(*, chunk_size: int = 5000) -> ChainVerification:
    """Recompute the hash chain from the first event and compare it with every stored row.

    Detects rows updated, deleted, inserted or reordered behind the service's back: the
    first position whose stored hash, predecessor or numbering disagrees is reported.
    """
    prev_hash = audit.GENESIS_HASH
    expected_position = 1
    checked = 0
    rows = AuditEvent.objects.order_by("position").values_list(
        "position", "prev_hash", "hash", "occurred_at", "actor", "action", "object_type", "object_id",
        "subject_ref", "details",
    )
    for position, stored_prev, stored_hash, occurred_at, actor, action, object_type, object_id, subject_ref, details in rows.iterator(chunk_size=chunk_size):
        if position != expected_position:
            return ChainVerification(
                checked, False, expected_position,
                f"expected event #{expected_position}, found #{position}: an event is missing or was inserted.",
            )
        if stored_prev != prev_hash:
            return ChainVerification(
                checked, False, position, "the link to the previous event does not match: events were removed, inserted or reordered."
            )
        fields = audit.event_fields(
            position=position, occurred_at=occurred_at, actor=actor, action=action, object_type=object_type,
            object_id=object_id, subject_ref=subject_ref, details=details,
        )
        if audit.chain_hash(prev_hash, fields) != stored_hash:
            return ChainVerification(checked, False, position, "the event's content does not match its hash: it was altered.")
        prev_hash = stored_hash
        expected_position += 1
        checked += 1
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and (head.position != checked or head.hash != prev_hash):
        return ChainVerification(
            checked, False, checked + 1 if head.position > checked else head.position,
            f"the chain head records {head.position} events but {checked} verify: events at the end were removed or added.",
        )
    return ChainVerification(checked, True, head_hash=prev_hash)


# --- Consent state (set-based) ------------------------------------------------------

CONSENT_STATES = ("valid", "withdrawn", "expired")  # a subject with no event at all: "no_consent"


def purpose_and_ancestor_ids(*, purpose: Purpose) -> list[int]:
    return list(Purpose.objects.filter(code__in=purpose.ancestor_codes()).values_list("id", flat=True))


def consent_state_sql(*, purpose: Purpose, at: datetime) -> tuple[str, list]:
    """SQL yielding (subject_id, state) for every subject with a consent event bearing on
    ``purpose`` at time ``at``; subjects absent from the result have no consent.

    Rule (documented in docs/governance.md): among events for the purpose or any
    ancestor purpose that occurred at or before ``at``, the latest decides (ties broken
    by recording order). ``given`` is valid unless it expired by ``at``; ``withdrawn``
    is withdrawn. Later events never change the answer for an earlier ``at`` (Art. 7(3)).
    Use it as a subquery or CTE in set-based statements.
    """
    ids = purpose_and_ancestor_ids(purpose=purpose)
    if not ids:
        return "SELECT NULL AS subject_id, NULL AS state WHERE 1 = 0", []
    placeholders = ", ".join(["%s"] * len(ids))
    sql = f"""
        SELECT subject_id,
               CASE WHEN action = 'withdrawn' THEN 'withdrawn'
                    WHEN expires_at IS NOT NULL AND expires_at <= %s THEN 'expired'
                    ELSE 'valid' END AS state
        FROM (
            SELECT subject_id, action, expires_at,
                   ROW_NUMBER() OVER (PARTITION BY subject_id ORDER BY occurred_at DESC, id DESC) AS rn
            FROM governance_consentevent
            WHERE purpose_id IN ({placeholders}) AND occurred_at <= %s
        ) latest
        WHERE rn = 1
    """
    return sql, [at, *ids, at]
