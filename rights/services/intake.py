"""Receiving an erasure request: the receipt hash that names a person without their
identifier, and recording the request (answered at once when no data are held)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance.services import ServiceConflict, ServiceError, audit_event_record
from rights import deadlines
from rights.models import ErasureChannel, ErasureGround, ErasureRegime, ErasureRequest, ErasureStatus
from rights.services._common import _choice, _conflict_if_open, _moment, _request_details, _user

NO_DATA_HELD_ANSWER = (
    "We hold no personal data relating to the identifier given, so there is nothing to erase. "
    "The request and this answer are recorded."
)


def erasure_receipt_hash(*, pseudonym: str) -> str:
    """HMAC-SHA-256 under ERASURE_RECEIPT_SALT of the pseudonym of the normalised identifier.

    Computed from the pseudonym (itself an HMAC of the normalised identifier) so that a
    request opened from a consent withdrawal, where only the subject is known, gets the
    same receipt hash as one sent with the identifier. Under a separate key, it matches
    neither the pseudonym nor the identifier, and outlives the subject row.
    """
    return hmac.new(settings.ERASURE_RECEIPT_SALT.encode(), pseudonym.encode(), hashlib.sha256).hexdigest()


@transaction.atomic
def erasure_request_receive(
    *,
    identifier: Any,
    ground: Any,
    channel: Any = ErasureChannel.API,
    received_at: Any = None,
    regime: Any = ErasureRegime.EU,
    notes: Any = "",
    actor: Any = None,
) -> ErasureRequest:
    """Record a request for erasure; the identifier is pseudonymised here and never stored.

    An identifier with no subject is still recorded and answered at once: no data held.
    ``notes`` (a request logged by hand: letter, phone, in person) stays on the request and
    out of the audit chain, which must not carry free text that could name the person.
    """
    from governance.pseudonymisation import pseudonymise
    from governance.selectors import data_subject_find
    from rights.selectors import erasure_previous_completed

    if not isinstance(identifier, str) or not identifier.strip():
        raise ServiceError("The data subject's identifier is required (e.g. their e-mail or customer number).", field="subject")
    if len(identifier) > 500:
        raise ServiceError("An identifier is at most 500 characters.", field="subject")
    ground = _choice(ground, ErasureGround, "ground", "Art. 17(1) ground")
    # Absent or empty means the default; any other value must be one of the choices ({} or 0
    # are refused, not read as "absent").
    channel = _choice(ErasureChannel.API if channel in (None, "") else channel, ErasureChannel, "channel", "channel")
    regime = _choice(ErasureRegime.EU if regime in (None, "") else regime, ErasureRegime, "regime", "regime")
    received = timezone.now() if received_at in (None, "") else _moment(received_at, "received_at")
    if notes is None:
        notes = ""
    if not isinstance(notes, str) or len(notes) > 4000:
        raise ServiceError("Notes are text of at most 4,000 characters.", field="notes")

    pseudonym = pseudonymise(identifier)
    receipt_hash = erasure_receipt_hash(pseudonym=pseudonym)
    _conflict_if_open(receipt_hash)
    subject = data_subject_find(identifier=identifier)  # earlier normalisations' subjects too
    received_on = timezone.localtime(received).date()
    due = deadlines.due_date(regime=regime, received_on=received_on, holidays=deadlines.configured_holidays())
    request = ErasureRequest(
        subject=subject,
        subject_ref=subject.reference if subject else None,
        identifier_receipt_hash=receipt_hash,
        data_held_at_receipt=subject is not None,
        channel=channel, received_at=received, regime=regime, ground=ground, due_at=due,
        notes=notes.strip(), created_by=_user(actor),
    )
    previous = erasure_previous_completed(receipt_hash=receipt_hash)
    if subject is None:
        request.status = ErasureStatus.COMPLETED
        request.completed_at = timezone.now()
        request.outcome = NO_DATA_HELD_ANSWER
        if previous is not None:
            request.outcome += (
                f" Data relating to this identifier were erased on {previous.completed_at:%Y-%m-%d} "
                f"(erasure request {previous.request_id})."
            )
    try:
        with transaction.atomic():
            request.save()
    except IntegrityError:
        # A concurrent request for the same person won the race for the open slot.
        raise ServiceConflict("An erasure request for this person is already open.")
    details = _request_details(request)
    if previous is not None:
        details["repeat_of_request"] = previous.request_id
    audit_event_record(
        actor=actor, action="erasure_request.received", object_type="erasure_request", object_id=request.pk,
        subject_ref=request.subject_ref, details=details,
    )
    if subject is None:
        audit_event_record(
            actor=actor, action="erasure_request.answered_no_data", object_type="erasure_request",
            object_id=request.pk, details={"answer": "no personal data held"},
        )
    return request
