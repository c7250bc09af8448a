"""Art. 17(1)(b): a consent withdrawal opens an erasure request, when the purpose's
processing activity is configured to erase on withdrawal (per batch of consent events,
as a catch-up sweep, or for one withdrawal)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from governance.services import audit_event_record
from rights import deadlines
from rights.models import OPEN_STATUSES, ErasureChannel, ErasureGround, ErasureRegime, ErasureRequest
from rights.services._common import _request_details
from rights.services.intake import erasure_receipt_hash


def _activity_purpose_codes_erasing_on_withdrawal() -> list[str]:
    from governance.models import ProcessingActivity

    return list(
        ProcessingActivity.objects.filter(erasure_on_consent_withdrawal=True, purposes__isnull=False)
        .values_list("purposes__code", flat=True)
        .distinct()
    )


def _related(code: str, activity_codes: list[str]) -> bool:
    return any(code == c or code.startswith(c + ".") or c.startswith(code + ".") for c in activity_codes)


def _open_for_withdrawals(rows, *, actor: Any) -> int:
    """Open one 17(1)(b) request per person from ``rows`` of (subject_id, pseudonym,
    reference, purpose_id, occurred_at), skipping people with a request already open."""
    first_per_subject: dict[int, tuple] = {}
    for subject_id, pseudonym, reference, purpose_id, occurred_at in rows:
        first_per_subject.setdefault(subject_id, (pseudonym, reference, purpose_id, occurred_at))
    if not first_per_subject:
        return 0
    hashes = {sid: erasure_receipt_hash(pseudonym=v[0]) for sid, v in first_per_subject.items()}
    already_open = set(
        ErasureRequest.objects.filter(identifier_receipt_hash__in=hashes.values(), status__in=OPEN_STATUSES)
        .values_list("identifier_receipt_hash", flat=True)
    )
    holidays = deadlines.configured_holidays()
    new = []
    for subject_id, (_, reference, purpose_id, occurred_at) in first_per_subject.items():
        if hashes[subject_id] in already_open:
            continue
        new.append(
            ErasureRequest(
                subject_id=subject_id, subject_ref=reference, identifier_receipt_hash=hashes[subject_id],
                channel=ErasureChannel.CONSENT_WITHDRAWAL, received_at=occurred_at, regime=ErasureRegime.EU,
                ground=ErasureGround.CONSENT_WITHDRAWN, purpose_id=purpose_id,
                due_at=deadlines.due_date(
                    regime=ErasureRegime.EU, received_on=timezone.localtime(occurred_at).date(), holidays=holidays
                ),
            )
        )
    # Two batches withdrawing the same people at once both reach this insert; the one
    # open request per person (unique_open_erasure_request) makes the later one a no-op
    # instead of an IntegrityError that would fail its batch.
    ErasureRequest.objects.bulk_create(new, batch_size=1000, ignore_conflicts=True)
    if new:
        opened = ErasureRequest.objects.filter(
            identifier_receipt_hash__in=[r.identifier_receipt_hash for r in new], status__in=OPEN_STATUSES
        ).count()
        audit_event_record(
            actor=actor, action="erasure_request.opened_on_withdrawal", object_type="erasure_request_batch",
            subject_ref=new[0].subject_ref if len(new) == 1 else None,
            details={"open_for_people": opened, "skipped_already_open": len(first_per_subject) - len(new),
                     "ground": ErasureGround.CONSENT_WITHDRAWN},
        )
    return len(new)


@transaction.atomic
def erasure_requests_open_for_withdrawals(*, consent_event_ids: list[str], actor: Any = None) -> int:
    """Open Art. 17(1)(b) requests for the withdrawals among ``consent_event_ids`` whose
    purpose belongs to a processing activity configured to erase on withdrawal.

    Set-based: one query for the withdrawals, one for the open requests, one bulk insert
    and one audit event for the batch. A person with a request already open is skipped.
    Returns how many requests were opened.
    """
    from governance.models import ConsentEvent

    activity_codes = _activity_purpose_codes_erasing_on_withdrawal()
    if not activity_codes or not consent_event_ids:
        return 0
    rows = (
        ConsentEvent.objects.filter(event_id__in=consent_event_ids, action="withdrawn")
        .order_by("subject_id", "occurred_at")
        .values_list("subject_id", "subject__pseudonym", "subject__reference", "purpose_id", "purpose__code", "occurred_at")
    )
    return _open_for_withdrawals(
        [(sid, p, ref, pid, at) for sid, p, ref, pid, code, at in rows if _related(code, activity_codes)], actor=actor
    )


@transaction.atomic
def erasure_requests_open_for_withdrawals_sweep(*, actor: Any = None) -> int:
    """Open Art. 17(1)(b) requests for every person whose latest consent event for a purpose
    of an activity that erases on withdrawal is a withdrawal not yet answered by a request.

    The consent ingest opens requests for its own new withdrawals
    (``erasure_requests_open_for_withdrawals``); this sweep catches up withdrawals recorded
    before an activity was configured to erase on withdrawal. Idempotent: a withdrawal
    counts as answered once any erasure request for the person was received at or after
    it (opened from it, sent by the person, rejected or executed). One window query, one
    bulk insert.
    """
    from governance.models import ConsentEvent, Purpose

    activity_codes = _activity_purpose_codes_erasing_on_withdrawal()
    if not activity_codes:
        return 0
    purpose_ids = [pid for pid, code in Purpose.objects.values_list("id", "code") if _related(code, activity_codes)]
    if not purpose_ids:
        return 0
    events, requests = ConsentEvent._meta.db_table, ErasureRequest._meta.db_table
    in_params = ", ".join(["%s"] * len(purpose_ids))
    sql = f"""
        SELECT e.id FROM (
            SELECT id, subject_id, action, occurred_at,
                   ROW_NUMBER() OVER (PARTITION BY subject_id, purpose_id ORDER BY occurred_at DESC, id DESC) AS rn
            FROM {events} WHERE purpose_id IN ({in_params})
        ) e
        WHERE e.rn = 1 AND e.action = 'withdrawn'
          AND NOT EXISTS (SELECT 1 FROM {requests} r WHERE r.subject_id = e.subject_id AND r.received_at >= e.occurred_at)
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, purpose_ids)
        event_ids = [row[0] for row in cursor.fetchall()]
    rows: list[tuple] = []
    for start in range(0, len(event_ids), 5000):  # bounded IN lists (SQLite's variable limit)
        rows += ConsentEvent.objects.filter(pk__in=event_ids[start : start + 5000]).values_list(
            "subject_id", "subject__pseudonym", "subject__reference", "purpose_id", "occurred_at"
        )
    rows.sort(key=lambda r: (r[0], r[4]))
    return _open_for_withdrawals(rows, actor=actor)


@transaction.atomic
def erasure_request_open_for_withdrawal(
    *, subject: Any, purpose: Any, occurred_at: datetime, actor: Any = None
) -> ErasureRequest | None:
    """Open an Art. 17(1)(b) request for one withdrawal, if the purpose's activity erases
    on withdrawal. Returns the request opened, the one already open, or None."""
    activity_codes = _activity_purpose_codes_erasing_on_withdrawal()
    if not _related(purpose.code, activity_codes):
        return None
    receipt_hash = erasure_receipt_hash(pseudonym=subject.pseudonym)
    existing = ErasureRequest.objects.filter(identifier_receipt_hash=receipt_hash, status__in=OPEN_STATUSES).first()
    if existing is not None:
        return existing
    request = ErasureRequest.objects.create(
        subject=subject, subject_ref=subject.reference, identifier_receipt_hash=receipt_hash,
        channel=ErasureChannel.CONSENT_WITHDRAWAL, received_at=occurred_at, regime=ErasureRegime.EU,
        ground=ErasureGround.CONSENT_WITHDRAWN, purpose=purpose,
        due_at=deadlines.due_date(
            regime=ErasureRegime.EU, received_on=timezone.localtime(occurred_at).date(),
            holidays=deadlines.configured_holidays(),
        ),
    )
    audit_event_record(
        actor=actor, action="erasure_request.opened_on_withdrawal", object_type="erasure_request",
        object_id=request.pk, subject_ref=request.subject_ref,
        details={**_request_details(request), "purpose": purpose.code},
    )
    return request
