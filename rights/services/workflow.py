"""The rules every data-subject request follows, whatever the right (GDPR Art. 12): intake
(the identifier, the channel, the regime, the moment of receipt, the Art. 12(3) deadline),
identity verification (Art. 12(6)), the one extension (Art. 12(3)) and the refusal with its
Art. 12(4) notice. Erasure (rights.services.decisions) and the other rights
(rights.services.requests) both call these on a row of ``RightsRequestBase``.

The functions here change a row already locked by the caller's transaction and write the
audit event under the caller's action prefix (``erasure_request`` or ``rights_request``);
the caller decides what else a decision entails (erasure writes a PDF notice of refusal).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.db import models
from django.utils import timezone

from governance.services import ServiceConflict, ServiceError, audit_event_record
from rights import deadlines
from rights.models import ErasureChannel, ErasureRegime, ErasureStatus, RightsRequestBase
from rights.services._common import _choice, _moment, _user

MAX_IDENTIFIER = 500
MAX_NOTES = 4000


@dataclass(frozen=True)
class Intake:
    channel: str
    regime: str
    received: datetime
    notes: str


def intake_identifier(identifier: Any) -> str:
    """The external identifier as given (pseudonymised by the caller, never stored)."""
    if not isinstance(identifier, str) or not identifier.strip():
        raise ServiceError("The data subject's identifier is required (e.g. their e-mail or customer number).", field="subject")
    if len(identifier) > MAX_IDENTIFIER:
        raise ServiceError("An identifier is at most 500 characters.", field="subject")
    return identifier


def intake_fields(*, channel: Any, regime: Any, received_at: Any, notes: Any) -> Intake:
    """Channel, regime, moment of receipt and notes of a request being received."""
    # Absent or empty means the default; any other value must be one of the choices ({} or 0
    # are refused, not read as "absent").
    channel = _choice(ErasureChannel.API if channel in (None, "") else channel, ErasureChannel, "channel", "channel")
    regime = _choice(ErasureRegime.EU if regime in (None, "") else regime, ErasureRegime, "regime", "regime")
    received = timezone.now() if received_at in (None, "") else _moment(received_at, "received_at")
    if notes is None:
        notes = ""
    if not isinstance(notes, str) or len(notes) > MAX_NOTES:
        raise ServiceError("Notes are text of at most 4,000 characters.", field="notes")
    return Intake(channel=channel, regime=regime, received=received, notes=notes.strip())


def intake_due_date(*, regime: str, received: datetime) -> date:
    """The Art. 12(3) deadline (or CCPA's) of a request received at ``received``."""
    received_on = timezone.localtime(received).date()
    return deadlines.due_date(regime=regime, received_on=received_on, holidays=deadlines.configured_holidays())


def locked(model: type[models.Model], request: Any, *, field: str, what: str) -> Any:
    """The request row (an instance or its id) locked for the caller's transaction."""
    pk = request.pk if isinstance(request, model) else request
    try:
        return model.objects.select_for_update().get(pk=pk)
    except (model.DoesNotExist, TypeError, ValueError):
        raise ServiceError(f"{what} {pk} does not exist.", field=field)


def _prefix(article: str) -> str:
    return f"{article}: " if article else ""


def request_verify(
    request: RightsRequestBase, *, method: Any, actor: Any, object_type: str, article: str = ""
) -> RightsRequestBase:
    """Record that the requester's identity was verified (Art. 12(6)), and how."""
    if request.status != ErasureStatus.RECEIVED:
        raise ServiceConflict(
            f"{_prefix(article)}Only a received request can be verified; this one is {request.status}.",
            status=request.status,
        )
    if not isinstance(method, str) or len(method) > 300:
        raise ServiceError("The verification method is text of at most 300 characters.", field="method")
    request.status = ErasureStatus.VERIFIED
    request.verified_at = timezone.now()
    request.verified_by = _user(actor)
    request.verification_method = method.strip()
    request.save(update_fields=["status", "verified_at", "verified_by", "verification_method", "updated_at"])
    audit_event_record(
        actor=actor, action=f"{object_type}.verified", object_type=object_type, object_id=request.pk,
        subject_ref=request.subject_ref, details={"method": request.verification_method},
    )
    return request


def request_extend(
    request: RightsRequestBase, *, reasons: Any, subject_informed_at: Any, actor: Any, today: Any,
    object_type: str, article: str = "",
) -> RightsRequestBase:
    """Extend the deadline once by two further months (Art. 12(3); CCPA: 45 days).

    Only while the first deadline has not passed, with reasons, and after telling the
    subject, which must also have happened within the first period.
    """
    if not request.is_open:
        raise ServiceConflict(f"{_prefix(article)}Only an open request can be extended; this one is {request.status}.")
    if not isinstance(reasons, str) or not reasons.strip():
        raise ServiceError(
            "Reasons are required: Art. 12(3) allows an extension only for complex or numerous requests, "
            "and the subject must be told why.", field="reasons",
        )
    if subject_informed_at in (None, ""):
        raise ServiceError("Record when the subject was informed of the extension (Art. 12(3)).", field="subject_informed_at")
    informed = _moment(subject_informed_at, "subject_informed_at")
    on = today or timezone.localdate()
    allowed, why = deadlines.extension_allowed(
        first_due=request.due_at, today=on, already_extended=request.extended_due_at is not None
    )
    if not allowed:
        raise ServiceConflict(why)
    if timezone.localtime(informed).date() > request.due_at:
        raise ServiceError("The subject must be informed within the first period.", field="subject_informed_at")
    if informed < request.received_at:
        raise ServiceError("The subject cannot be informed before the request was received.", field="subject_informed_at")
    request.extended_due_at = deadlines.extended_due_date(
        regime=request.regime, received_on=timezone.localtime(request.received_at).date(),
        holidays=deadlines.configured_holidays(),
    )
    request.extension_reasons = reasons.strip()
    request.extended_at = timezone.now()
    request.subject_informed_of_extension_at = informed
    request.save(update_fields=[
        "extended_due_at", "extension_reasons", "extended_at", "subject_informed_of_extension_at", "updated_at",
    ])
    audit_event_record(
        actor=actor, action=f"{object_type}.extended", object_type=object_type, object_id=request.pk,
        subject_ref=request.subject_ref,
        details={
            "previous_due_at": request.due_at.isoformat(), "extended_due_at": request.extended_due_at.isoformat(),
            "reasons": request.extension_reasons, "subject_informed_at": informed.isoformat(),
        },
    )
    return request


def refusal_notice(*, received_at: datetime, not_doing: str, ground_label: str, justification: str) -> str:
    """The Art. 12(4) notice: reasons, the right to complain and to a judicial remedy."""
    return (
        f"We are not {not_doing} in response to your request received on "
        f"{timezone.localtime(received_at):%d %B %Y}. Reason: {ground_label}. "
        f"{justification.strip()} "
        "You have the right to lodge a complaint with a supervisory authority (Art. 77 GDPR), in particular "
        "in the Member State of your habitual residence, place of work or place of the alleged infringement, "
        "and the right to an effective judicial remedy (Art. 79 GDPR)."
    )


def request_refuse(
    request: RightsRequestBase, *, refusal_ground: Any, grounds: type[models.TextChoices], grounds_label: str,
    grounds_article: str, justification: Any, not_doing: str, actor: Any, object_type: str, article: str = "",
) -> RightsRequestBase:
    """Refuse a received or verified request on one of ``grounds``, with a justification and
    the Art. 12(4) notice, which becomes the request's outcome."""
    if request.status not in (ErasureStatus.RECEIVED, ErasureStatus.VERIFIED):
        raise ServiceConflict(
            f"{_prefix(article)}Only a received or verified request can be rejected; this one is {request.status}."
        )
    ground = _choice(refusal_ground, grounds, "refusal_ground", grounds_label)
    if not isinstance(justification, str) or not justification.strip():
        raise ServiceError(f"A justification is required for a refusal under {grounds_article}.", field="justification")
    request.status = ErasureStatus.REJECTED
    request.refusal_ground = ground
    request.refusal_justification = justification.strip()
    request.refusal_notice = refusal_notice(
        received_at=request.received_at, not_doing=not_doing, ground_label=grounds(ground).label,
        justification=justification,
    )
    request.rejected_at = timezone.now()
    request.outcome = request.refusal_notice
    request.save(update_fields=[
        "status", "refusal_ground", "refusal_justification", "refusal_notice", "rejected_at", "outcome", "updated_at",
    ])
    audit_event_record(
        actor=actor, action=f"{object_type}.rejected", object_type=object_type, object_id=request.pk,
        subject_ref=request.subject_ref,
        details={"refusal_ground": ground, "justification": request.refusal_justification},
    )
    return request
