"""Receiving an erasure request: the receipt hash that names a person without their
identifier, and recording the request (answered at once when no data are held)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance.services import ServiceConflict, audit_event_record
from rights.models import ErasureChannel, ErasureGround, ErasureRegime, ErasureRequest, ErasureStatus
from rights.services import workflow
from rights.services._common import _choice, _conflict_if_open, _request_details, _user

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

    identifier = workflow.intake_identifier(identifier)
    ground = _choice(ground, ErasureGround, "ground", "Art. 17(1) ground")
    intake = workflow.intake_fields(channel=channel, regime=regime, received_at=received_at, notes=notes)
    channel, regime, received = intake.channel, intake.regime, intake.received

    pseudonym = pseudonymise(identifier)
    receipt_hash = erasure_receipt_hash(pseudonym=pseudonym)
    _conflict_if_open(receipt_hash)
    subject = data_subject_find(identifier=identifier)  # earlier normalisations' subjects too
    due = workflow.intake_due_date(regime=regime, received=received)
    request = ErasureRequest(
        subject=subject,
        subject_ref=subject.reference if subject else None,
        identifier_receipt_hash=receipt_hash,
        data_held_at_receipt=subject is not None,
        channel=channel, received_at=received, regime=regime, ground=ground, due_at=due,
        notes=intake.notes, created_by=_user(actor),
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
